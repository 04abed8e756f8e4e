"""The DICOM services the gateway offers, as data: SOP classes, transfer syntaxes and statuses.

The DIMSE listener negotiates from these tables and the conformance statement in `conformance/`
is generated from them, so the document cannot say anything the SCP does not do.
"""

from __future__ import annotations

import enum
from types import MappingProxyType

# Storage SOP Classes a triage site receives (PS3.4 Table B.5-1), UID → name.
STORAGE_SOP_CLASSES = MappingProxyType(
    {
        "1.2.840.10008.5.1.4.1.1.1": "Computed Radiography Image Storage",
        "1.2.840.10008.5.1.4.1.1.1.1": "Digital X-Ray Image Storage - For Presentation",
        "1.2.840.10008.5.1.4.1.1.1.1.1": "Digital X-Ray Image Storage - For Processing",
        "1.2.840.10008.5.1.4.1.1.1.2": "Digital Mammography X-Ray Image Storage - For Presentation",
        "1.2.840.10008.5.1.4.1.1.1.2.1": "Digital Mammography X-Ray Image Storage - For Processing",
        "1.2.840.10008.5.1.4.1.1.2": "CT Image Storage",
        "1.2.840.10008.5.1.4.1.1.2.1": "Enhanced CT Image Storage",
        "1.2.840.10008.5.1.4.1.1.4": "MR Image Storage",
        "1.2.840.10008.5.1.4.1.1.4.1": "Enhanced MR Image Storage",
        "1.2.840.10008.5.1.4.1.1.6.1": "Ultrasound Image Storage",
        "1.2.840.10008.5.1.4.1.1.3.1": "Ultrasound Multi-frame Image Storage",
        "1.2.840.10008.5.1.4.1.1.7": "Secondary Capture Image Storage",
        "1.2.840.10008.5.1.4.1.1.13.1.3": "Breast Tomosynthesis Image Storage",
    }
)

VERIFICATION_SOP_CLASS = "1.2.840.10008.1.1"
# Transfer syntaxes of a C-ECHO (it has no data set: any of the uncompressed ones will do).
VERIFICATION_TRANSFER_SYNTAXES = frozenset(
    {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"}
)

# The gateway's Implementation Class UID (a UUID-derived UID, PS3.5 B.2) and version name.
IMPLEMENTATION_CLASS_UID = "2.25.187428799574295362799774671661723389911"
IMPLEMENTATION_VERSION_NAME = "HITLGW_0_1"

# Transfer syntaxes accepted as proposed; instances are stored unchanged (PS3.5 Annex A).
TRANSFER_SYNTAXES = MappingProxyType(
    {
        "1.2.840.10008.1.2": "Implicit VR Little Endian",
        "1.2.840.10008.1.2.1": "Explicit VR Little Endian",
        "1.2.840.10008.1.2.1.99": "Deflated Explicit VR Little Endian",
        "1.2.840.10008.1.2.4.50": "JPEG Baseline (Process 1)",
        "1.2.840.10008.1.2.4.51": "JPEG Extended (Process 2 & 4)",
        "1.2.840.10008.1.2.4.57": "JPEG Lossless, Non-Hierarchical (Process 14)",
        "1.2.840.10008.1.2.4.70": "JPEG Lossless, First-Order Prediction (Process 14 SV1)",
        "1.2.840.10008.1.2.4.80": "JPEG-LS Lossless",
        "1.2.840.10008.1.2.4.81": "JPEG-LS Near-Lossless",
        "1.2.840.10008.1.2.4.90": "JPEG 2000 Image Compression (Lossless Only)",
        "1.2.840.10008.1.2.4.91": "JPEG 2000 Image Compression",
        "1.2.840.10008.1.2.5": "RLE Lossless",
    }
)


class StoreStatus(enum.IntEnum):
    """C-STORE response statuses used by the SCP (PS3.4 Table B.2-1, PS3.7 Annex C)."""

    SUCCESS = 0x0000
    # No warning of Table B.2-1 names "kept as a new version"; coercion is the nearest meaning.
    WARNING_COERCION = 0xB000
    OUT_OF_RESOURCES = 0xA700
    DATA_SET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
    SOP_CLASS_NOT_SUPPORTED = 0x0122
    CANNOT_UNDERSTAND = 0xC000
    PROCESSING_FAILURE = 0x0110


STATUS_MEANINGS = MappingProxyType(
    {
        StoreStatus.SUCCESS: "Stored durably (spooled, fsynced and committed), or an identical "
        "copy was already held",
        StoreStatus.WARNING_COERCION: "The SOP Instance UID was received before with other "
        "content; this copy is kept as a new version",
        StoreStatus.OUT_OF_RESOURCES: "The spool is full or over its quota",
        StoreStatus.DATA_SET_DOES_NOT_MATCH_SOP_CLASS: "The data set's SOP Class UID differs "
        "from the Affected SOP Class UID",
        StoreStatus.SOP_CLASS_NOT_SUPPORTED: "The Affected SOP Class UID is not the abstract "
        "syntax of the presentation context the request came on",
        StoreStatus.CANNOT_UNDERSTAND: "The data set cannot be parsed or lacks the Study, "
        "Series or SOP Instance UID, or the C-STORE carries no data set",
        StoreStatus.PROCESSING_FAILURE: "An internal failure; the sender may retry",
    }
)
