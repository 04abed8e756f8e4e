"""The DICOMweb index of a stored instance: QIDO-RS matching keys and its DICOM JSON metadata.

Built from the header parsed at ingest (no second read of the file), written in the same
transaction as the instance row. Bulk data (pixels, large binary values) is left out of the
metadata; WADO-RS serves the instance itself for those.
"""

from __future__ import annotations

import json
from typing import Any

import pydicom

# Binary values above this size are not part of the metadata (PS3.18 F.2.7 bulk data).
BULK_DATA_THRESHOLD = 1024
_BINARY_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "UN"}

# Column → DICOM keyword, with the column's length limit.
TEXT_KEYS: dict[str, tuple[str, int]] = {
    "study_date": ("StudyDate", 8),
    "study_time": ("StudyTime", 16),
    "accession_number": ("AccessionNumber", 64),
    "patient_id": ("PatientID", 64),
    "patient_name": ("PatientName", 200),
    "study_id": ("StudyID", 16),
    "study_description": ("StudyDescription", 64),
    "referring_physician_name": ("ReferringPhysicianName", 200),
    "modality": ("Modality", 16),
    "series_description": ("SeriesDescription", 64),
}
NUMBER_KEYS: dict[str, str] = {
    "series_number": "SeriesNumber",
    "instance_number": "InstanceNumber",
}


def _number(value: object) -> int | None:
    try:
        return int(str(value).strip()) if value not in (None, "") else None
    except ValueError:
        return None


def _drop_bulk(document: dict[str, Any]) -> dict[str, Any]:
    kept: dict[str, Any] = {}
    for tag, element in document.items():
        inline = str(element.get("InlineBinary", ""))
        bulky = "BulkDataURI" in element or len(inline) * 3 // 4 > BULK_DATA_THRESHOLD
        if tag == "7FE00010" or (element.get("vr") in _BINARY_VRS and bulky):
            continue
        if element.get("vr") == "SQ":
            element = {
                **element,
                "Value": [_drop_bulk(item) for item in element.get("Value", [])],
            }
        kept[tag] = element
    return kept


def index_attributes(ds: pydicom.Dataset) -> dict[str, Any]:
    """The index columns and the metadata JSON of a data set read without its pixels."""
    row: dict[str, Any] = {}
    for column, (keyword, limit) in TEXT_KEYS.items():
        value = ds.get(keyword)
        row[column] = "" if value is None else str(value).strip()[:limit]
    for column, keyword in NUMBER_KEYS.items():
        row[column] = _number(ds.get(keyword))
    row["dicom_json"] = json.dumps(_drop_bulk(ds.to_json_dict()), separators=(",", ":"))
    return row
