"""DICOM pixels to the model's input tensor, as the version's input contract says.

The demo model is trained through `dataset_to_tensor` too, so training and serving cannot drift.
Steps: Modality LUT (PS3.3 C.11.1), VOI linear window (C.11.2.1.2), MONOCHROME1 inversion
(C.7.6.3.1.2), area/bilinear resize to the contract size, scale to the contract range.
"""

from __future__ import annotations

import functools
import hashlib
import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.pixels.processing import apply_modality_lut

from scoring.contract import InputContract

FloatImage = npt.NDArray[np.float32]


def _first_value(value: object) -> float | None:
    """WindowCenter/WindowWidth may be multi-valued; the first pair is the default (C.11.2.1.2)."""
    if value is None:
        return None
    if isinstance(value, str | bytes | int | float):
        return float(value)
    try:
        return float(next(iter(value)))  # type: ignore[call-overload]
    except (StopIteration, TypeError, ValueError):
        return None


def _window(
    values: npt.NDArray[np.float64], center: float, width: float, function: str
) -> npt.NDArray[np.float64]:
    """VOI linear window into [0, 1] (PS3.3 C.11.2.1.2.1 LINEAR, C.11.2.1.3.2 LINEAR_EXACT)."""
    if function == "LINEAR_EXACT":
        out = (values - center) / width + 0.5
    else:
        # SIGMOID and unknown functions fall back to LINEAR: the contract maps intensity linearly.
        out = (values - (center - 0.5)) / (width - 1) + 0.5
    return np.clip(out, 0.0, 1.0)


def _minmax(values: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return np.zeros_like(values)
    return (values - low) / (high - low)


@functools.lru_cache(maxsize=32)
def _resample_matrix(n_in: int, n_out: int) -> npt.NDArray[np.float64]:
    """Row-stochastic 1-D resampling: area averaging when shrinking, bilinear when enlarging.

    Cached (read-only) because every slice of a series has the same size.
    """
    weights = np.zeros((n_out, n_in))
    scale = n_in / n_out
    if scale >= 1.0:
        for i in range(n_out):
            start, stop = i * scale, (i + 1) * scale
            for j in range(math.floor(start), min(n_in, math.ceil(stop))):
                weights[i, j] = min(stop, j + 1) - max(start, j)
    else:
        for i in range(n_out):
            pos = min(max((i + 0.5) * scale - 0.5, 0.0), n_in - 1.0)
            j = min(int(pos), n_in - 2) if n_in > 1 else 0
            frac = pos - j
            weights[i, j] += 1.0 - frac
            if n_in > 1:
                weights[i, j + 1] += frac
    result: npt.NDArray[np.float64] = weights / weights.sum(axis=1, keepdims=True)
    result.setflags(write=False)
    return result


def resize(image: npt.NDArray[np.float64], height: int, width: int) -> npt.NDArray[np.float64]:
    """Resize a 2-D image with separable area (shrink) or bilinear (enlarge) weights."""
    if image.shape == (height, width):
        return image
    rows_index, rows_weight = _banded(image.shape[0], height)
    cols_index, cols_weight = _banded(image.shape[1], width)
    # Each output pixel takes a few neighbours with the matrices' weights: the same result as
    # the dense products in O(pixels), which matters for a 2500-pixel radiograph.
    tall = np.zeros((height, image.shape[1]), dtype=np.float64)
    for k in range(rows_index.shape[1]):
        tall += rows_weight[:, k, None] * image[rows_index[:, k], :]
    out = np.zeros((height, width), dtype=np.float64)
    for k in range(cols_index.shape[1]):
        out += tall[:, cols_index[:, k]] * cols_weight[None, :, k]
    return np.asarray(out, dtype=np.float64)


@functools.lru_cache(maxsize=32)
def _banded(n_in: int, n_out: int) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.float64]]:
    """The non-zero band of `_resample_matrix` as (input index, weight) per output, padded."""
    matrix = _resample_matrix(n_in, n_out)
    width = int((matrix > 0).sum(axis=1).max())
    index = np.zeros((n_out, width), dtype=np.intp)
    weight = np.zeros((n_out, width), dtype=np.float64)
    for i in range(n_out):
        nonzero = np.flatnonzero(matrix[i])
        index[i, : nonzero.size] = nonzero
        weight[i, : nonzero.size] = matrix[i, nonzero]
    index.setflags(write=False)
    weight.setflags(write=False)
    return index, weight


def dataset_to_tensor(ds: Dataset, contract: InputContract) -> FloatImage:
    """A grayscale instance (first frame) as a float32 [1, 1, H, W] tensor per the contract."""
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        raise ValueError("only single-sample (grayscale) images can be scored")
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip()
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ValueError(f"unsupported PhotometricInterpretation {photometric!r}")
    pixels = ds.pixel_array
    if pixels.ndim == 3:
        pixels = pixels[0]  # multi-frame: the first frame
    if pixels.ndim != 2:
        raise ValueError(f"unexpected pixel array shape {pixels.shape}")
    values = np.asarray(apply_modality_lut(pixels, ds), dtype=np.float64)

    center, width = contract.window_center, contract.window_width
    if contract.intensity == "window" and center is None and "VOILUTSequence" in ds:
        unit = _voi_lut_unit(values, ds)
    elif contract.intensity == "window" and center is None:
        center = _first_value(ds.get("WindowCenter"))
        width = _first_value(ds.get("WindowWidth"))
        unit = _windowed_or_minmax(values, ds, center, width)
    else:
        unit = _windowed_or_minmax(
            values, ds, center, width, use_window=contract.intensity == "window"
        )
    if photometric == "MONOCHROME1":
        unit = 1.0 - unit

    resized = resize(unit, contract.height, contract.width)
    scaled = contract.scale_min + resized * (contract.scale_max - contract.scale_min)
    return np.ascontiguousarray(scaled.reshape(contract.shape), dtype=np.float32)


def _windowed_or_minmax(
    values: npt.NDArray[np.float64],
    ds: Dataset,
    center: float | None,
    width: float | None,
    *,
    use_window: bool = True,
) -> npt.NDArray[np.float64]:
    if use_window and center is not None and width is not None and width >= 1:
        function = str(ds.get("VOILUTFunction", "LINEAR")).strip().upper()
        return _window(values, center, width, function)
    return _minmax(values)


def _voi_lut_unit(values: npt.NDArray[np.float64], ds: Dataset) -> npt.NDArray[np.float64]:
    """The first VOI LUT of the VOI LUT Sequence (PS3.3 C.11.2.1.1) scaled to [0, 1].

    The table maps modality values (from the first mapped value on, clamped at both ends) to
    output values of LUT Descriptor's third value in bits.
    """
    from pydicom.pixels.processing import apply_voi

    item = ds.VOILUTSequence[0]
    bits = int(item.LUTDescriptor[2])
    mapped = apply_voi(np.rint(values).astype(np.int64), ds, index=0)
    return np.clip(np.asarray(mapped, dtype=np.float64) / float((1 << bits) - 1), 0.0, 1.0)


def _order_key(ds: Dataset) -> tuple[int, str]:
    number = ds.get("InstanceNumber")
    return (int(number) if number not in (None, "") else 2**31, str(ds.get("SOPInstanceUID", "")))


def select_instance(paths: Sequence[str]) -> str:
    """The instance scored for a study: the first by (InstanceNumber, SOPInstanceUID)."""
    if not paths:
        raise ValueError("a study with no instances cannot be scored")
    headers = [(dcmread(p, stop_before_pixels=True), p) for p in paths]
    with_pixels = [(ds, p) for ds, p in headers if "Rows" in ds and "Columns" in ds] or headers
    return min(with_pixels, key=lambda item: _order_key(item[0]))[1]


def load_cxr_tensor(paths: Sequence[str], contract: InputContract) -> FloatImage:
    """Read the study's first instance and preprocess it per the contract into [1, 1, H, W]."""
    return dataset_to_tensor(dcmread(select_instance(paths)), contract)


def load_radiographs(paths: Sequence[str], contract: InputContract) -> FloatImage:
    """Every image of the study (ordered by Instance Number, then SOP Instance UID) stacked as
    [N, 1, H, W]: each is scored and the study takes the highest score."""
    if not paths:
        raise ValueError("a study with no instances cannot be scored")
    headers = [(dcmread(p, stop_before_pixels=True), p) for p in paths]
    with_pixels = [(ds, p) for ds, p in headers if "Rows" in ds and "Columns" in ds]
    if not with_pixels:
        raise ValueError("the study has no image with pixel data")
    ordered = sorted(with_pixels, key=lambda item: _order_key(item[0]))
    tensors = [dataset_to_tensor(dcmread(p), contract) for _, p in ordered]
    return np.ascontiguousarray(np.concatenate(tensors, axis=0), dtype=np.float32)


def tensor_hash(tensor: npt.NDArray[np.float32]) -> str:
    """SHA-256 of the tensor bytes (C order, little-endian float32): the recorded input hash."""
    canonical = np.ascontiguousarray(tensor, dtype="<f4")
    return hashlib.sha256(canonical.tobytes(order="C")).hexdigest()
