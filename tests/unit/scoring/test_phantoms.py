"""Synthetic DX phantoms: valid Part 10 files, deterministic, with the finding where it belongs."""

from __future__ import annotations

from pathlib import Path
from typing import TypedDict

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import validate_file_meta
from pydicom.uid import DigitalXRayImageStorageForPresentation, ExplicitVRLittleEndian

from scoring.phantoms import make_cxr_dataset, make_cxr_pixels, write_cxr_file


class Ids(TypedDict):
    """The identifying arguments of the phantom factories."""

    patient_id: str
    patient_name: str
    accession: str


IDS: Ids = {"patient_id": "PAT1", "patient_name": "Doe^Jane", "accession": "ACC1"}


def test_written_file_is_a_valid_dx_for_presentation(tmp_path: Path) -> None:
    path = write_cxr_file(tmp_path / "a.dcm", True, seed=3, encounter_id="ENC9", **IDS)
    ds = dcmread(path)
    validate_file_meta(ds.file_meta)
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert ds.SOPClassUID == DigitalXRayImageStorageForPresentation
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert (ds.Modality, ds.BodyPartExamined, ds.PresentationIntentType) == (
        "DX",
        "CHEST",
        "FOR PRESENTATION",
    )
    assert (ds.PatientID, str(ds.PatientName), ds.AccessionNumber) == ("PAT1", "Doe^Jane", "ACC1")
    assert ds.AdmissionID == "ENC9"
    assert (ds.Rows, ds.Columns, ds.BitsStored, ds.HighBit) == (256, 256, 12, 11)
    assert len({ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID}) == 3


def test_pixel_data_round_trips(tmp_path: Path) -> None:
    original = make_cxr_dataset(False, seed=5, **IDS)
    path = tmp_path / "b.dcm"
    original.save_as(path, enforce_file_format=True)
    read = dcmread(path).pixel_array
    assert read.dtype == np.uint16
    assert np.array_equal(read, original.pixel_array)
    assert read.max() <= 4095


def test_same_arguments_same_instance_and_uids() -> None:
    a = make_cxr_dataset(True, seed=11, **IDS)
    b = make_cxr_dataset(True, seed=11, **IDS)
    c = make_cxr_dataset(True, seed=12, **IDS)
    assert a.PixelData == b.PixelData
    assert a.SOPInstanceUID == b.SOPInstanceUID
    assert a.StudyInstanceUID == b.StudyInstanceUID
    assert a.PixelData != c.PixelData
    assert a.StudyInstanceUID != c.StudyInstanceUID


def test_given_uids_are_used() -> None:
    ds = make_cxr_dataset(False, seed=1, study_uid="1.2.3", series_uid="1.2.3.4", **IDS)
    assert (ds.StudyInstanceUID, ds.SeriesInstanceUID) == ("1.2.3", "1.2.3.4")


def test_pneumothorax_darkens_a_lung_edge() -> None:
    # Same seed: identical anatomy and noise, so the difference is the crescent alone.
    with_finding = make_cxr_pixels(True, np.random.default_rng(7)).astype(int)
    without = make_cxr_pixels(False, np.random.default_rng(7)).astype(int)
    changed = with_finding != without
    assert changed.sum() > 300
    assert (with_finding[changed] < without[changed]).mean() > 0.95
    columns = np.nonzero(changed.any(axis=0))[0]
    assert columns.max() < 128 or columns.min() >= 128  # one lung only


@pytest.mark.parametrize(
    "kwargs",
    [{"bits_stored": 10}, {"photometric": "RGB"}, {"rescale_slope": 0.0}],
)
def test_invalid_arguments_are_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=r"bits_stored|photometric|rescale_slope"):
        make_cxr_dataset(True, seed=1, **IDS, **kwargs)  # type: ignore[arg-type]


def test_stored_values_must_fit_bits_stored() -> None:
    with pytest.raises(ValueError, match="BitsStored"):
        make_cxr_dataset(True, seed=1, rescale_intercept=-4000, **IDS)
