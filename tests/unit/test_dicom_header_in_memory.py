"""A received file's header is read from its first bytes in memory, and must be exactly what
pydicom gives reading the whole file, wherever the header ends against those bytes."""

from __future__ import annotations

import warnings
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from gateway.dicom_header import HEADER_READ, ParsedHeader, data_set_offset, parse_header
from tests.unit.test_dicom_header_file_meta import write_ct

PIXEL_TAG_BYTES = b"\xe0\x7f\x10\x00"


def _as_received(path: Path) -> ParsedHeader:
    """As the receivers call it: from the data set's offset, in the negotiated syntax."""
    syntax = str(pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return parse_header(path, data_set_at=data_set_offset(path), transfer_syntax=syntax)


def _with_private(path: Path, value: bytes, *, pixels: bool = True, sequence: bool = False) -> Path:
    """The slice at `path` with a private OB element of `value` ahead of the identifying ones."""
    ds = pydicom.dcmread(path)
    block = ds.private_block(0x0009, "HITL TEST", create=True)
    block.add_new(0x10, "OB", value)
    if sequence:
        item = Dataset()
        item.CodeMeaning = "x" * 60
        ds.ReferencedImageSequence = Sequence([item] * 4)
        ds["ReferencedImageSequence"].is_undefined_length = True
    if not pixels:
        del ds.PixelData
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
@pytest.mark.parametrize(
    "filler",
    # Where the first read ends: inside the private value, in the elements after it (tags,
    # lengths, values), in the sequence, in the pixel data's own header, or past the header.
    [HEADER_READ - 600, HEADER_READ - 300, HEADER_READ - 250, HEADER_READ - 40, HEADER_READ,
     HEADER_READ + 10, 3 * HEADER_READ],
)  # fmt: skip
@pytest.mark.parametrize("sequence", [False, True], ids=["flat", "undefined-length sequence"])
def test_the_header_read_in_memory_is_what_pydicom_reads(
    tmp_path: Path, syntax: str, filler: int, sequence: bool
) -> None:
    path = _with_private(write_ct(tmp_path / "ct.dcm", syntax, rows=64), b"\x00" * filler,
                         sequence=sequence)  # fmt: skip
    header = _as_received(path)
    assert header == parse_header(path)
    assert header.study_instance_uid
    assert header.attributes


def test_pixel_data_tag_bytes_inside_an_early_value_do_not_cut_the_header_short(
    tmp_path: Path,
) -> None:
    # The bytes of a pixel data tag lie inside a private value in the first read, and the
    # header goes on past it: the reading reaches the end of what was read, and the file is
    # read again, whole.
    value = (b"\x00" * 100 + PIXEL_TAG_BYTES + b"OW\x00\x00") * (HEADER_READ // 50)
    path = _with_private(write_ct(tmp_path / "ct.dcm", ExplicitVRLittleEndian), value)
    assert PIXEL_TAG_BYTES in path.read_bytes()[:HEADER_READ]
    header = _as_received(path)
    assert header == parse_header(path)
    assert header.sop_instance_uid == pydicom.dcmread(path).SOPInstanceUID


@pytest.mark.parametrize("filler", [10, HEADER_READ - 500, HEADER_READ, 2 * HEADER_READ])
def test_a_file_without_pixel_data_is_read_whole(tmp_path: Path, filler: int) -> None:
    path = _with_private(write_ct(tmp_path / "sr.dcm", ExplicitVRLittleEndian),
                         b"\x01" * filler, pixels=False)  # fmt: skip
    header = _as_received(path)
    assert header == parse_header(path)
    assert header.patient_name == "Müller^Jürgen"
