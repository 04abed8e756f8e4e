"""Head CT: series selection, slice ordering by Image Position (Patient), HU-windowed volume.

Slices are ordered by the projection of Image Position (Patient) on the slice normal (the cross
product of the two Image Orientation (Patient) direction cosines, PS3.3 C.7.6.2.1.1), never by
Instance Number or arrival order, so a study delivered in any order gives the same tensor, the
same input hash and the same score.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from pydicom import dcmread
from pydicom.dataset import Dataset

from scoring.contract import InputContract
from scoring.preprocess import FloatImage, dataset_to_tensor

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MAX_SLICE_THICKNESS_MM = 5.5
MIN_SLICES = 5


@dataclass(frozen=True, slots=True)
class SeriesChoice:
    """The series chosen for scoring and its instance paths in anatomical order."""

    series_instance_uid: str
    paths: tuple[str, ...]
    reason: str


def slice_normal(ds: Dataset) -> npt.NDArray[np.float64]:
    """Unit normal of the slice plane from Image Orientation (Patient)."""
    cosines = np.asarray([float(v) for v in ds.ImageOrientationPatient], dtype=np.float64)
    normal = np.cross(cosines[:3], cosines[3:])
    length = float(np.linalg.norm(normal))
    if length < 1e-6:
        raise ValueError("Image Orientation (Patient) has parallel direction cosines")
    return np.asarray(normal / length, dtype=np.float64)


def slice_position(ds: Dataset, normal: npt.NDArray[np.float64]) -> float:
    """Distance of the slice along the normal."""
    position = np.asarray([float(v) for v in ds.ImagePositionPatient], dtype=np.float64)
    return float(np.dot(position, normal))


def _is_candidate(ds: Dataset) -> str:
    """Why an instance cannot be scored as part of a non-contrast axial series ("" if it can)."""
    if str(ds.get("SOPClassUID", "")) != CT_IMAGE_STORAGE:
        return "not CT Image Storage"
    image_type = [str(v).upper() for v in ds.get("ImageType", [])]
    if "LOCALIZER" in image_type:
        return "localizer"
    if str(ds.get("ContrastBolusAgent", "")).strip():
        return "contrast-enhanced"
    if "ImagePositionPatient" not in ds or "ImageOrientationPatient" not in ds:
        return "no patient geometry"
    thickness = ds.get("SliceThickness")
    if thickness not in (None, "") and float(thickness) > MAX_SLICE_THICKNESS_MM:
        return f"slice thickness {float(thickness):g} mm"
    if abs(slice_normal(ds)[2]) < 0.9:
        return "not axial"
    return ""


def select_series(headers: Sequence[tuple[str, Dataset]]) -> SeriesChoice | None:
    """The non-contrast axial series with the most slices (ties: thinner, then lowest UID)."""
    groups: dict[str, list[tuple[str, Dataset]]] = {}
    for path, ds in headers:
        if not _is_candidate(ds):
            groups.setdefault(str(ds.SeriesInstanceUID), []).append((path, ds))
    eligible = {uid: items for uid, items in groups.items() if len(items) >= MIN_SLICES}
    if not eligible:
        return None

    def rank(uid: str) -> tuple[int, float, str]:
        items = eligible[uid]
        thickness = float(items[0][1].get("SliceThickness") or 0.0)
        return (-len(items), thickness, uid)

    chosen = min(eligible, key=rank)
    items = eligible[chosen]
    normal = slice_normal(items[0][1])
    # Position first; the SOP Instance UID breaks exact ties so the order never depends on input.
    ordered = sorted(
        items, key=lambda it: (slice_position(it[1], normal), str(it[1].SOPInstanceUID))
    )
    return SeriesChoice(chosen, tuple(p for p, _ in ordered), f"{len(items)} axial slices")


def read_headers(paths: Sequence[str]) -> list[tuple[str, Dataset]]:
    """Headers of every instance (pixels not read)."""
    return [(p, dcmread(p, stop_before_pixels=True)) for p in paths]


def load_ct_volume(paths: Sequence[str], contract: InputContract) -> FloatImage:
    """The selected series as a [slices, 1, H, W] tensor in anatomical order per the contract."""
    choice = select_series(read_headers(paths))
    if choice is None:
        raise ValueError("the study has no non-contrast axial CT series to score")
    tensors = [dataset_to_tensor(dcmread(p), contract) for p in choice.paths]
    return np.ascontiguousarray(np.concatenate(tensors, axis=0), dtype=np.float32)
