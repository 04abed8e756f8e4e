"""Preprocessing of real DICOM encodings against reference arrays; CT slice order and routing."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.uid import (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
)

from scoring.contract import InputContract
from scoring.ct import load_ct_volume
from scoring.ct_demo_model import CT_CONTRACT
from scoring.ct_phantoms import make_ct_series, write_ct_series
from scoring.phantoms import make_cxr_dataset
from scoring.preprocess import dataset_to_tensor, tensor_hash
from scoring.routing import route_study

CONTRACT = InputContract(use_case="t", input_name="image", height=64, width=64, label="x")


def _reference(photometric: str = "MONOCHROME2") -> np.ndarray:
    ds = make_cxr_dataset(
        True, seed=11, patient_id="P", patient_name="N", accession="A", photometric=photometric
    )
    return dataset_to_tensor(ds, CONTRACT)


def _written(tmp_path: Path, syntax: str, photometric: str = "MONOCHROME2") -> Path:
    ds = make_cxr_dataset(
        True, seed=11, patient_id="P", patient_name="N", accession="A", photometric=photometric
    )
    path = tmp_path / f"{syntax}-{photometric}.dcm"
    if syntax == "implicit":
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
        ds.save_as(path, implicit_vr=True, little_endian=True, enforce_file_format=True)
    elif syntax == "explicit":
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.save_as(path, enforce_file_format=True)
    elif syntax == "rle":
        ds.compress(RLELossless)
        ds.save_as(path, enforce_file_format=True)
    elif syntax == "jpeg2000":
        ds.compress(JPEG2000Lossless, encoding_plugin="pylibjpeg")
        ds.save_as(path, enforce_file_format=True)
    else:
        # dcmtk encodes the JPEG processes pydicom cannot write: +el lossless SV1, +eb baseline.
        source = tmp_path / "source.dcm"
        ds.save_as(source, enforce_file_format=True)
        flag = {"jpeg-lossless": "+el", "jpeg-baseline": "+eb"}[syntax]
        subprocess.run(["dcmcjpeg", flag, str(source), str(path)], check=True)
    return path


LOSSLESS = ["explicit", "implicit", "rle", "jpeg2000", "jpeg-lossless"]


@pytest.mark.parametrize("syntax", LOSSLESS)
@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
def test_lossless_encodings_give_the_reference_tensor(
    tmp_path: Path, syntax: str, photometric: str
) -> None:
    if syntax == "jpeg-lossless" and shutil.which("dcmcjpeg") is None:
        pytest.fail("dcmtk (dcmcjpeg) is a test dependency")
    path = _written(tmp_path, syntax, photometric)
    tensor = dataset_to_tensor(dcmread(path), CONTRACT)
    assert tensor_hash(tensor) == tensor_hash(_reference(photometric))


def test_monochrome1_is_inverted_to_the_same_picture() -> None:
    # The MONOCHROME1 phantom stores inverted values; after inversion the model sees the same.
    mono1 = make_cxr_dataset(
        True, seed=11, patient_id="P", patient_name="N", accession="A", photometric="MONOCHROME1"
    )
    mono2 = make_cxr_dataset(True, seed=11, patient_id="P", patient_name="N", accession="A")
    assert float(np.corrcoef(mono1.pixel_array.ravel(), mono2.pixel_array.ravel())[0, 1]) < -0.99
    np.testing.assert_allclose(_reference("MONOCHROME1"), _reference(), atol=1e-5)


def test_jpeg_baseline_is_close_to_the_reference(tmp_path: Path) -> None:
    ds = dcmread(_written(tmp_path, "jpeg-baseline"))
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.50"
    tensor = dataset_to_tensor(ds, CONTRACT)
    # Baseline is 8-bit and lossy: the same picture within a few grey levels.
    assert float(np.abs(tensor - _reference()).mean()) < 0.03


def test_signed_pixels_and_hu_window_match_unsigned() -> None:
    signed = make_ct_series(True, seed=3, patient_id="C", accession="C", signed=True)
    unsigned = make_ct_series(True, seed=3, patient_id="C", accession="C")
    for a, b in zip(signed, unsigned, strict=True):
        np.testing.assert_array_equal(
            dataset_to_tensor(a, CT_CONTRACT), dataset_to_tensor(b, CT_CONTRACT)
        )


def test_multi_frame_uses_the_first_frame() -> None:
    ds = make_cxr_dataset(True, seed=11, patient_id="P", patient_name="N", accession="A")
    single = dataset_to_tensor(ds, CONTRACT)
    frame = ds.PixelData
    ds.NumberOfFrames = 2
    ds.PixelData = frame + bytes(len(frame))
    np.testing.assert_array_equal(dataset_to_tensor(ds, CONTRACT), single)


def test_ct_in_random_order_gives_the_sorted_tensor(tmp_path: Path) -> None:
    paths = [str(p) for p in write_ct_series(tmp_path, True, seed=9, patient_id="C", accession="C")]
    sorted_tensor = load_ct_volume(paths, CT_CONTRACT)
    shuffled = [paths[i] for i in np.random.default_rng(1).permutation(len(paths))]
    assert tensor_hash(load_ct_volume(shuffled, CT_CONTRACT)) == tensor_hash(sorted_tensor)
    # Anatomical order, not Instance Number order.
    z = [float(dcmread(p).ImagePositionPatient[2]) for p in paths]
    assert z == sorted(z)


def test_routing_chooses_the_non_contrast_series_and_refuses_others(tmp_path: Path) -> None:
    plain = write_ct_series(tmp_path / "a", False, seed=4, patient_id="C", accession="C")
    contrast = write_ct_series(
        tmp_path / "b", False, seed=4, patient_id="C", accession="C", contrast=True, slices=20
    )
    route = route_study([str(p) for p in [*plain, *contrast]])
    assert route is not None
    assert route.use_case == "ct-haemorrhage"
    assert set(route.instance_paths) == {str(p) for p in plain}
    assert route_study([str(p) for p in contrast]) is None
    chest = make_cxr_dataset(False, seed=1, patient_id="P", patient_name="N", accession="A")
    chest.save_as(tmp_path / "cxr.dcm", enforce_file_format=True)
    cxr_route = route_study([str(tmp_path / "cxr.dcm")])
    assert cxr_route is not None
    assert cxr_route.use_case == "cxr-pneumothorax"


def test_voi_lut_sequence_is_applied_before_the_window(tmp_path: Path) -> None:
    from pydicom.dataset import Dataset

    from scoring.preprocess import resize

    ds = make_cxr_dataset(True, seed=11, patient_id="P", patient_name="N", accession="A")
    entries = 4096
    lut = np.rint(65535 * (np.arange(entries) / (entries - 1)) ** 0.5).astype(np.uint16)
    item = Dataset()
    item.add_new(0x00283002, "US", [entries, 0, 16])  # LUT Descriptor
    item.add_new(0x00283006, "US", lut.tolist())  # LUT Data
    ds.VOILUTSequence = [item]
    path = tmp_path / "voi-lut.dcm"
    ds.save_as(path, enforce_file_format=True)

    stored = make_cxr_dataset(True, seed=11, patient_id="P", patient_name="N", accession="A")
    expected = resize(lut[stored.pixel_array].astype(np.float64) / 65535, 64, 64)
    tensor = dataset_to_tensor(dcmread(path), CONTRACT)
    np.testing.assert_allclose(tensor[0, 0], expected, atol=1e-6)
    assert tensor_hash(tensor) != tensor_hash(_reference())  # not the linear window
