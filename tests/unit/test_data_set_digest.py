"""The streaming data set digest equals the spool's hash of the whole file, for any split."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from pydicom.uid import generate_uid

from gateway.dicom_header import DataSetDigest, data_set_offset
from tests.unit.test_assembly import write_dicom


def _digest(data: bytes, size: int) -> str:
    digest = DataSetDigest()
    for start in range(0, len(data), size):
        digest.update(memoryview(data)[start : start + size])
    assert digest.size == len(data)
    return digest.hexdigest()


@pytest.mark.parametrize("size", [1, 7, 100, 143, 144, 145, 300, 1 << 20])
def test_any_split_of_a_part10_file_hashes_its_data_set(tmp_path: Path, size: int) -> None:
    path = write_dicom(tmp_path / "dx.dcm", generate_uid())
    data = path.read_bytes()
    offset = data_set_offset(path)
    assert offset > 144
    assert _digest(data, size) == hashlib.sha256(data[offset:]).hexdigest()


@pytest.mark.parametrize("data", [b"", b"short", b"\x00" * 128 + b"NOPE" + b"x" * 500])
def test_what_is_not_part10_is_hashed_whole(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "raw"
    path.write_bytes(data)
    assert data_set_offset(path) == 0
    for size in (1, 3, 1000):
        assert _digest(data, size) == hashlib.sha256(data).hexdigest()
