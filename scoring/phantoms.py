"""Deterministic synthetic chest X-ray phantoms (not patients) for the demo model, data and tests.

The image is in "for presentation" polarity (MONOCHROME2: bright = attenuating): soft tissue and
mediastinum bright, lungs darker with a texture of bright vessel markings, and a pneumothorax as a
darker crescent without markings along one lung's apex and lateral edge, where the collapsed lung
has pulled away from the chest wall. Only numpy and pydicom are needed, so `hitl-gateway demo send`
and the integration tests import this module without onnxruntime or MLflow.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    generate_uid,
)

FULL_SCALE_12 = 4095
# Display window of the 12-bit phantom, in modality units; scaled with BitsStored.
WINDOW_CENTER_12 = 2048.0
WINDOW_WIDTH_12 = 4096.0
DEFAULT_STUDY_DATETIME = datetime(2025, 1, 6, 9, 30, 0)

_BODY = 2400.0
_MEDIASTINUM = 3100.0
_AIR_OUTSIDE = 250.0
_LUNG = 1300.0
_PNEUMOTHORAX = 650.0
_MARKINGS = 420.0
_QUANTUM_NOISE = 35.0


def _smooth_noise(rng: np.random.Generator, size: int, cell: int) -> npt.NDArray[np.float32]:
    """Unit-variance noise with features about `cell` pixels wide (a bilinearly enlarged grid)."""
    grid = max(2, size // cell + 2)
    coarse = rng.standard_normal((grid, grid), dtype=np.float32)
    pos = np.linspace(0.0, grid - 1.001, size, dtype=np.float32)
    i0 = pos.astype(np.intp)
    frac = pos - i0
    # Indexing, not matrix products: BLAS threads are slower than this at these sizes.
    rows = coarse[i0] * (1 - frac)[:, None] + coarse[i0 + 1] * frac[:, None]
    out = rows[:, i0] * (1 - frac)[None, :] + rows[:, i0 + 1] * frac[None, :]
    return np.asarray(out / (out.std() + 1e-6), dtype=np.float32)


def _ellipse(
    y: npt.NDArray[np.float32],
    x: npt.NDArray[np.float32],
    cy: float,
    cx: float,
    ry: float,
    rx: float,
) -> npt.NDArray[np.float32]:
    """Normalised radius on the (column y, row x) grid: < 1 inside the ellipse."""
    return np.asarray(((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2, dtype=np.float32)


def make_cxr_pixels(
    positive: bool, rng: np.random.Generator, size: int = 256
) -> npt.NDArray[np.uint16]:
    """A PA chest phantom in 12-bit modality units (0..4095); `positive` adds a pneumothorax."""
    coords = ((np.arange(size, dtype=np.float32) + 0.5) / size).astype(np.float32)
    y, x = coords[:, None], coords[None, :]
    exposure = rng.uniform(0.92, 1.08)

    image = np.full((size, size), _AIR_OUTSIDE, dtype=np.float32)
    body = _ellipse(y, x, 0.55, 0.5, 0.52 * rng.uniform(0.95, 1.05), 0.46 * rng.uniform(0.95, 1.05))
    inside = body < 1
    image[inside] = _BODY
    image[(np.abs(x - 0.5) < 0.07 + 0.05 * y) & inside] = _MEDIASTINUM

    # Lung markings: ridges of smooth noise look like branching vessels.
    ridges = np.clip(1.0 - np.abs(_smooth_noise(rng, size, max(4, size // 24))) / 0.45, 0.0, 1.0)
    markings = _LUNG + _MARKINGS * ridges + 80.0 * _smooth_noise(rng, size, max(8, size // 8))

    ry = 0.30 * rng.uniform(0.92, 1.08)
    rx = 0.15 * rng.uniform(0.92, 1.08)
    cy = 0.50 + rng.uniform(-0.02, 0.02)
    side_with_pneumothorax = int(rng.integers(0, 2))
    collapse = rng.uniform(0.62, 0.74)
    for side, cx in enumerate((0.5 - 0.2, 0.5 + 0.2)):
        lung = _ellipse(y, x, cy, cx, ry, rx) < 1
        image[lung] = markings[lung]
        if positive and side == side_with_pneumothorax:
            # The collapsed lung shrinks towards the hilum (medial, down): air remains apically
            # and laterally, as a crescent.
            lateral = -1.0 if cx < 0.5 else 1.0
            inner = _ellipse(
                y,
                x,
                cy + ry * (1 - collapse) * 0.9,
                cx - lateral * rx * (1 - collapse) * 0.9,
                ry * collapse,
                rx * collapse,
            )
            image[lung & (inner >= 1)] = _PNEUMOTHORAX

    image *= exposure
    image += _QUANTUM_NOISE * rng.standard_normal((size, size), dtype=np.float32)
    return np.clip(np.rint(image), 0, FULL_SCALE_12).astype(np.uint16)


def _uid(seed: int, accession: str, kind: str) -> UID:
    return generate_uid(entropy_srcs=["hitl-gateway-phantom", str(seed), accession, kind])


def make_cxr_dataset(
    positive: bool,
    *,
    seed: int,
    patient_id: str,
    patient_name: str,
    accession: str,
    study_uid: str | None = None,
    series_uid: str | None = None,
    sop_instance_uid: str | None = None,
    encounter_id: str = "",
    rows: int = 256,
    photometric: str = "MONOCHROME2",
    bits_stored: int = 12,
    rescale_slope: float = 1.0,
    rescale_intercept: float = 0.0,
    instance_number: int = 1,
    study_datetime: datetime = DEFAULT_STUDY_DATETIME,
) -> Dataset:
    """A DX For Presentation instance (PS3.3 A.26) of a phantom; same arguments, same bytes."""
    if bits_stored not in (12, 16):
        raise ValueError(f"bits_stored must be 12 or 16, got {bits_stored}")
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ValueError(f"photometric must be MONOCHROME1 or MONOCHROME2, got {photometric!r}")
    if rescale_slope <= 0:
        raise ValueError("rescale_slope must be positive")

    gain = 1.0 if bits_stored == 12 else 16.0
    full_scale = (1 << bits_stored) - 1
    modality = (
        make_cxr_pixels(positive, np.random.default_rng(seed), rows).astype(np.float64) * gain
    )
    center = WINDOW_CENTER_12 * gain
    width = WINDOW_WIDTH_12 * gain
    if photometric == "MONOCHROME1":
        # Same picture, opposite polarity: invert in modality space and mirror the window so
        # that the VOI output (PS3.3 C.11.2.1.2.1) is exactly inverted too.
        top = rescale_slope * full_scale + 2 * rescale_intercept
        modality = top - modality
        center = top - center + 1
    stored = np.rint((modality - rescale_intercept) / rescale_slope)
    if stored.min() < 0 or stored.max() > full_scale:
        raise ValueError("rescale slope/intercept put stored values outside BitsStored")

    meta = FileMetaDataset()
    sop_uid = (
        UID(sop_instance_uid)
        if sop_instance_uid
        else _uid(seed, accession, f"sop-{instance_number}")
    )
    meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID

    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.SOPClassUID = DigitalXRayImageStorageForPresentation
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = study_datetime.strftime("%Y%m%d")
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = study_datetime.strftime("%H%M%S")
    ds.AccessionNumber = accession
    ds.Modality = "DX"
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.Manufacturer = "hitl-gateway synthetic phantom"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "CHEST PA (SYNTHETIC PHANTOM, NOT A PATIENT)"
    ds.SeriesDescription = "PA"
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "PA"
    ds.AdmissionID = encounter_id
    ds.StudyInstanceUID = study_uid or _uid(seed, accession, "study")
    ds.SeriesInstanceUID = series_uid or _uid(seed, accession, "series")
    ds.StudyID = accession[:16]
    ds.SeriesNumber = 1
    ds.InstanceNumber = instance_number
    ds.PatientOrientation = ["L", "F"]
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"

    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.Rows = ds.Columns = rows
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    ds.PixelIntensityRelationship = "LOG"
    ds.PixelIntensityRelationshipSign = 1
    ds.RescaleIntercept = f"{rescale_intercept:g}"
    ds.RescaleSlope = f"{rescale_slope:g}"
    ds.RescaleType = "US"
    ds.WindowCenter = f"{center:g}"
    ds.WindowWidth = f"{width:g}"
    ds.ImagerPixelSpacing = [f"{430.0 / rows:.6g}"] * 2
    ds.PixelData = stored.astype("<u2").tobytes()
    return ds


def write_cxr_file(
    path: str | Path,
    positive: bool,
    *,
    seed: int,
    patient_id: str,
    patient_name: str,
    accession: str,
    study_uid: str | None = None,
    series_uid: str | None = None,
    sop_instance_uid: str | None = None,
    encounter_id: str = "",
    rows: int = 256,
    photometric: str = "MONOCHROME2",
    bits_stored: int = 12,
    rescale_slope: float = 1.0,
    rescale_intercept: float = 0.0,
    instance_number: int = 1,
    study_datetime: datetime = DEFAULT_STUDY_DATETIME,
) -> Path:
    """Write `make_cxr_dataset(...)` as a DICOM Part 10 file and return its path."""
    ds = make_cxr_dataset(
        positive,
        seed=seed,
        patient_id=patient_id,
        patient_name=patient_name,
        accession=accession,
        study_uid=study_uid,
        series_uid=series_uid,
        sop_instance_uid=sop_instance_uid,
        encounter_id=encounter_id,
        rows=rows,
        photometric=photometric,
        bits_stored=bits_stored,
        rescale_slope=rescale_slope,
        rescale_intercept=rescale_intercept,
        instance_number=instance_number,
        study_datetime=study_datetime,
    )
    target = Path(path)
    ds.save_as(target, enforce_file_format=True)
    return target
