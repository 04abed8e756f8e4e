"""DICOM pixels to tensor: Modality LUT, VOI, polarity, resize, hash, instance choice."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TypedDict

import numpy as np
import pytest

from scoring.demo_model import DEMO_CONTRACT
from scoring.phantoms import make_cxr_dataset, write_cxr_file
from scoring.preprocess import (
    dataset_to_tensor,
    load_cxr_tensor,
    resize,
    select_instance,
    tensor_hash,
)


class Ids(TypedDict):
    """The identifying arguments of the phantom factories."""

    patient_id: str
    patient_name: str
    accession: str


IDS: Ids = {"patient_id": "PAT1", "patient_name": "Doe^Jane", "accession": "ACC1"}


def _tensor(**kwargs: object) -> np.ndarray:
    return dataset_to_tensor(make_cxr_dataset(True, seed=21, **IDS, **kwargs), DEMO_CONTRACT)  # type: ignore[arg-type]


def test_tensor_shape_type_and_range() -> None:
    t = _tensor()
    assert t.shape == (1, 1, 256, 256)
    assert t.dtype == np.float32
    assert t.flags.c_contiguous
    assert 0.0 <= float(t.min()) < float(t.max()) <= 1.0


def test_monochrome1_gives_the_same_tensor_as_monochrome2() -> None:
    mono2 = _tensor()
    mono1_ds = make_cxr_dataset(True, seed=21, photometric="MONOCHROME1", **IDS)
    assert not np.array_equal(
        mono1_ds.pixel_array, make_cxr_dataset(True, seed=21, **IDS).pixel_array
    )
    np.testing.assert_allclose(dataset_to_tensor(mono1_ds, DEMO_CONTRACT), mono2, atol=1e-6)


def test_rescale_slope_and_intercept_are_honoured() -> None:
    plain = _tensor(bits_stored=16)
    rescaled_ds = make_cxr_dataset(
        True, seed=21, bits_stored=16, rescale_slope=2.0, rescale_intercept=-1024.0, **IDS
    )
    assert (rescaled_ds.RescaleSlope, rescaled_ds.RescaleIntercept) == (2, -1024)
    np.testing.assert_allclose(dataset_to_tensor(rescaled_ds, DEMO_CONTRACT), plain, atol=1e-6)
    # The same stored values read without the Modality LUT would give another picture.
    del rescaled_ds.RescaleSlope, rescaled_ds.RescaleIntercept
    assert not np.allclose(dataset_to_tensor(rescaled_ds, DEMO_CONTRACT), plain, atol=1e-2)


def test_bit_depth_barely_changes_the_tensor() -> None:
    # Only the 1-unit offsets of the DICOM LINEAR window (PS3.3 C.11.2.1.2.1) differ in scale.
    np.testing.assert_allclose(_tensor(bits_stored=16), _tensor(), atol=1e-3)


def test_contract_window_overrides_the_header() -> None:
    narrow = replace(DEMO_CONTRACT, window_center=1300.0, window_width=200.0)
    ds = make_cxr_dataset(False, seed=2, **IDS)
    header = dataset_to_tensor(ds, DEMO_CONTRACT)
    contract = dataset_to_tensor(ds, narrow)
    assert (contract == 0).mean() > (header == 0).mean()


def test_minmax_mapping_spans_the_range() -> None:
    t = dataset_to_tensor(
        make_cxr_dataset(False, seed=2, **IDS), replace(DEMO_CONTRACT, intensity="minmax")
    )
    assert float(t.min()) == 0.0
    assert float(t.max()) == pytest.approx(1.0)


def test_area_resize_halves_by_block_means() -> None:
    image = np.random.default_rng(0).random((512, 512))
    expected = image.reshape(256, 2, 256, 2).mean(axis=(1, 3))
    np.testing.assert_allclose(resize(image, 256, 256), expected, atol=1e-12)
    enlarged = resize(image[:128, :128], 256, 256)
    assert enlarged.shape == (256, 256)
    assert image[:128, :128].min() <= enlarged.min()
    assert enlarged.max() <= image[:128, :128].max()


def test_larger_images_are_resized_to_the_contract() -> None:
    t = _tensor(rows=512)
    assert t.shape == (1, 1, 256, 256)


def test_tensor_hash_is_over_little_endian_float32_bytes() -> None:
    t = _tensor()
    assert tensor_hash(t) == tensor_hash(t.astype(">f4"))
    assert tensor_hash(t) == tensor_hash(t.copy())
    changed = t.copy()
    changed[0, 0, 0, 0] += 1e-3
    assert tensor_hash(changed) != tensor_hash(t)
    assert len(tensor_hash(t)) == 64


def test_first_instance_of_the_study_is_scored(tmp_path: Path) -> None:
    paths = [
        str(write_cxr_file(tmp_path / f"{n}.dcm", n == 1, seed=n, instance_number=n, **IDS))
        for n in (3, 1, 2)
    ]
    assert select_instance(paths) == paths[1]
    expected = dataset_to_tensor(
        make_cxr_dataset(True, seed=1, instance_number=1, **IDS), DEMO_CONTRACT
    )
    np.testing.assert_array_equal(load_cxr_tensor(paths, DEMO_CONTRACT), expected)


def test_empty_study_is_refused() -> None:
    with pytest.raises(ValueError, match="no instances"):
        load_cxr_tensor([], DEMO_CONTRACT)


@pytest.mark.parametrize(
    ("shape", "size"), [((2500, 2000), (512, 384)), ((300, 200), (77, 45)), ((100, 50), (40, 80))]
)
def test_fast_area_resize_equals_the_resampling_matrices(
    shape: tuple[int, int], size: tuple[int, int]
) -> None:
    from scoring.preprocess import _resample_matrix, resize

    image = np.random.default_rng(0).normal(size=shape)
    dense = _resample_matrix(shape[0], size[0]) @ image @ _resample_matrix(shape[1], size[1]).T
    np.testing.assert_allclose(resize(image, *size), dense, atol=1e-12)
