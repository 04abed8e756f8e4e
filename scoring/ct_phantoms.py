"""Deterministic synthetic non-contrast head CT phantoms (not patients): a series of axial slices.

Each slice is in Hounsfield units through Rescale Slope/Intercept (PS3.3 C.11.1): air -1000,
skull about +900, brain parenchyma about +35 with noise, ventricles (CSF) about +8. A positive
study carries an intraparenchymal haemorrhage: a bright (+70 HU) ellipsoid over a few adjacent
slices. Geometry follows the CT Image IOD (PS3.3 A.3): Image Position/Orientation (Patient),
Slice Thickness, Pixel Spacing, so slice ordering can be tested for real.
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
    CTImageStorage,
    ExplicitVRLittleEndian,
    generate_uid,
)

HU_AIR, HU_SKULL, HU_BRAIN, HU_CSF, HU_BLEED = -1000.0, 900.0, 35.0, 8.0, 72.0
SLICE_MM = 5.0
DEFAULT_DATETIME = datetime(2025, 1, 6, 3, 10, 0)


def _uid(seed: int, accession: str, kind: str) -> UID:
    return generate_uid(entropy_srcs=["hitl-gateway-ct-phantom", str(seed), accession, kind])


def make_head_volume(
    positive: bool, rng: np.random.Generator, slices: int = 16, size: int = 64
) -> npt.NDArray[np.float32]:
    """A [slices, size, size] head volume in HU; `positive` adds a haemorrhage."""
    z = np.linspace(-1.0, 1.0, slices, dtype=np.float32)[:, None, None]
    coords = (np.arange(size, dtype=np.float32) + 0.5) / size * 2 - 1
    y, x = coords[None, :, None], coords[None, None, :]
    scale = rng.uniform(0.9, 1.0)
    radius = (y / (0.85 * scale)) ** 2 + (x / (0.72 * scale)) ** 2 + (z / 2.5) ** 2
    volume = np.full((slices, size, size), HU_AIR, dtype=np.float32)
    volume[radius < 1.0] = HU_SKULL
    brain = radius < 0.78
    volume[brain] = HU_BRAIN
    ventricles = ((y / 0.25) ** 2 + (np.abs(x) - 0.12) ** 2 / 0.01 + (z / 0.5) ** 2) < 1
    volume[ventricles & brain] = HU_CSF
    if positive:
        cz = rng.uniform(-0.4, 0.4)
        cy, cx = rng.uniform(-0.3, 0.3), rng.uniform(-0.3, 0.3)
        r = rng.uniform(0.12, 0.2)
        bleed = ((z - cz) / 0.3) ** 2 + ((y - cy) / r) ** 2 + ((x - cx) / r) ** 2 < 1
        volume[bleed & brain] = HU_BLEED
    noise = rng.normal(0.0, 4.0, volume.shape).astype(np.float32)
    volume = volume + np.where(volume > HU_AIR, noise, 0.0).astype(np.float32)
    return volume


def make_ct_series(
    positive: bool,
    *,
    seed: int,
    patient_id: str,
    accession: str,
    slices: int = 16,
    size: int = 64,
    patient_name: str = "PHANTOM^HEAD",
    encounter_id: str = "",
    signed: bool = False,
    contrast: bool = False,
    study_datetime: datetime = DEFAULT_DATETIME,
) -> list[Dataset]:
    """The CT Image Storage instances of one axial series, in slice order (inferior first)."""
    volume = make_head_volume(positive, np.random.default_rng(seed), slices, size)
    study_uid = _uid(seed, accession, "study")
    series_uid = _uid(seed, accession, "series-contrast" if contrast else "series")
    spacing = 220.0 / size
    datasets = []
    for index in range(slices):
        sop_uid = _uid(seed, accession, f"sop-{index}-{contrast}")
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        ds = Dataset()
        ds.file_meta = meta
        ds.SpecificCharacterSet = "ISO_IR 192"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = sop_uid
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = study_datetime.strftime("%Y%m%d")
        ds.StudyTime = ds.SeriesTime = ds.ContentTime = study_datetime.strftime("%H%M%S")
        ds.AccessionNumber = accession
        ds.Modality = "CT"
        ds.Manufacturer = "hitl-gateway synthetic phantom"
        ds.ReferringPhysicianName = ""
        ds.StudyDescription = "CT HEAD WO CONTRAST (SYNTHETIC PHANTOM, NOT A PATIENT)"
        ds.SeriesDescription = "AXIAL 5MM"
        ds.PatientName = patient_name
        ds.PatientID = patient_id
        ds.PatientBirthDate = ""
        ds.PatientSex = ""
        ds.AdmissionID = encounter_id
        ds.BodyPartExamined = "HEAD"
        if contrast:
            ds.ContrastBolusAgent = "IODINATED CONTRAST"
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.StudyID = accession[:16]
        ds.SeriesNumber = 3 if contrast else 2
        # Instance numbers deliberately do not follow anatomy: ordering must use the geometry.
        ds.InstanceNumber = (index * 7) % slices + 1
        ds.FrameOfReferenceUID = _uid(seed, accession, "frame")
        ds.ImagePositionPatient = [-110.0, -110.0, index * SLICE_MM - 40.0]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.SliceThickness = SLICE_MM
        ds.PixelSpacing = [f"{spacing:.6g}", f"{spacing:.6g}"]
        ds.KVP = 120
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows = ds.Columns = size
        ds.BitsAllocated = 16
        ds.BitsStored = 16 if signed else 12
        ds.HighBit = ds.BitsStored - 1
        ds.PixelRepresentation = 1 if signed else 0
        ds.RescaleIntercept = "0" if signed else "-1024"
        ds.RescaleSlope = "1"
        ds.RescaleType = "HU"
        ds.WindowCenter = "40"
        ds.WindowWidth = "80"
        hu = np.rint(volume[index])
        if signed:
            ds.PixelData = hu.astype("<i2").tobytes()
        else:
            ds.PixelData = np.clip(hu + 1024, 0, 4095).astype("<u2").tobytes()
        datasets.append(ds)
    return datasets


def write_ct_series(directory: str | Path, positive: bool, **kwargs: object) -> list[Path]:
    """Write `make_ct_series(...)` as Part 10 files `slice-NNN.dcm`; returns the paths."""
    target = Path(directory)
    target.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, ds in enumerate(make_ct_series(positive, **kwargs)):  # type: ignore[arg-type]
        path = target / f"{ds.SeriesNumber}-slice-{index:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
