"""The decoded data set gives exactly pydicom's DICOM JSON and values, only faster."""

from __future__ import annotations

import functools
import io
import json
import logging
import struct
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from gateway.dicom_index import NUMBER_KEYS, TEXT_KEYS, DecodedDataSet, _drop_bulk, _number

PYDICOM_DATA = Path(pydicom.__file__).parent / "data"
KEYWORDS = [k for k, _ in TEXT_KEYS.values()] + list(NUMBER_KEYS.values())
KEYWORDS += ["SOPInstanceUID", "StudyInstanceUID", "ImageType", "NumberOfStudyRelatedInstances"]
_LONG_VRS = {"OB", "OW", "OF", "OD", "OL", "OV", "SQ", "UN", "UT", "UR", "UC", "SV", "UV"}

# Values at the edges of what is decoded without pydicom, by VR and tag.
EDGE_VALUES: dict[str, tuple[int, list[bytes]]] = {
    "CS": (0x00080008, [b"ORIGINAL\\PRIMARY", b"A\\\\B", b"  ", b" A", b"\\", b"X\x00", b""]),
    "LO": (0x00100020, [b" ID1 ", b"A \\B ", b"   ", b"caf\xc3\xa9", b"caf\xe9", b"A\\\\"]),
    "PN": (0x00100010, [b"Doe^John", b"A^B=\xe5\xb1\xb1=", b"A^B\\C^D", b"  ", b"Y^T==", b" A"]),
    "IS": (0x00200013, [b" 6", b"+7", b"1.0", b"", b"1\\2", b"1\\", b"abc", b"-3 "]),
    "DS": (0x00181050, [b"1.50", b" .5", b"1e3", b"NaN", b"1\\2.5", b"", b"1.", b"inf"]),
    "US": (0x00280010, [struct.pack("<H", 512), struct.pack("<3H", 1, 2, 3), b"\x01"]),
    "FL": (0x00189087, [struct.pack("<f", 0.3), struct.pack("<2f", 1.5, -2.25)]),
    "UL": (0x00081160, [struct.pack("<2L", 7, 1 << 31)]),
    "UI": (0x0020000D, [b"1.2.3\x00", b"1.2.3\\1.2.4"]),
    "AE": (0x00080054, [b" AE1 ", b"A\\ B "]),
    "TM": (0x00080030, [b"101010.5 ", b"1010"]),
    "LT": (0x00081030, [b"text\\with backslash  ", b"  lead"]),
    "UT": (0x00400441, [b"long text \\ here  "]),
    "UR": (0x00081190, [b"http://x/y  "]),
}
CHARSETS = [None, b"ISO_IR 100", b"ISO_IR 192", b"\\ISO 2022 IR 87"]


@pytest.fixture(autouse=True)
def _quiet() -> Iterator[None]:
    logging.disable(logging.CRITICAL)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
    logging.disable(logging.NOTSET)


def _element(tag: int, vr: str, value: bytes, implicit: bool) -> bytes:
    if len(value) % 2:
        value += b"\x00" if vr == "UI" else b" "
    group, element = tag >> 16, tag & 0xFFFF
    if implicit:
        return struct.pack("<HHI", group, element, len(value)) + value
    if vr in _LONG_VRS:
        return struct.pack("<HH2sHI", group, element, vr.encode(), 0, len(value)) + value
    return struct.pack("<HH2sH", group, element, vr.encode(), len(value)) + value


def _part10(elements: list[tuple[int, str, bytes]], implicit: bool) -> bytes:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID("1.2.840.10008.5.1.4.1.1.2")
    meta.MediaStorageSOPInstanceUID = UID("1.2.3.4")
    meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    head, empty = io.BytesIO(), pydicom.Dataset()
    empty.file_meta = meta
    pydicom.dcmwrite(head, empty, enforce_file_format=True)
    body = b"".join(_element(t, vr, v, implicit) for t, vr, v in sorted(elements))
    return head.getvalue() + body


def _edge_cases() -> Iterator[bytes]:
    for implicit in (False, True):
        for charset in CHARSETS:
            for vr, (tag, values) in EDGE_VALUES.items():
                for value in values:
                    elements = [(tag, vr, value), (0x00080018, "UI", b"1.2.3.4")]
                    if charset is not None:
                        elements.append((0x00080005, "CS", charset))
                    yield _part10(elements, implicit)


def _pydicom_files() -> Iterator[Path]:
    for directory in ("test_files", "charset_files"):
        yield from sorted(p for p in (PYDICOM_DATA / directory).rglob("*") if p.is_file())


def _read_file(path: Path) -> pydicom.Dataset:
    return pydicom.dcmread(path, stop_before_pixels=True, force=True)


def _read_bytes(data: bytes) -> pydicom.Dataset:
    return pydicom.dcmread(io.BytesIO(data), force=True)


def _assert_same(read: Callable[[], pydicom.Dataset]) -> bool:
    """True when both decoders read the data set; asserts they agree."""
    try:
        expected = read().to_json_dict()
    except Exception as exc:
        with pytest.raises(type(exc)):
            DecodedDataSet(read())
        return False
    decoded = DecodedDataSet(read())
    dump = json.dumps(_drop_bulk(decoded.document), separators=(",", ":"))
    assert dump == json.dumps(_drop_bulk(expected), separators=(",", ":"))
    reference = read()
    for keyword in KEYWORDS:
        ours, theirs = decoded.get(keyword), reference.get(keyword)
        assert ("" if ours is None else str(ours).strip()) == (
            "" if theirs is None else str(theirs).strip()
        ), keyword
        assert _number(ours) == _number(theirs), keyword
    return True


def test_pydicom_test_files_decode_as_pydicom_decodes_them() -> None:
    compared = 0
    for path in _pydicom_files():
        try:
            _read_file(path)
        except Exception:  # noqa: S112  (not DICOM: the folder holds other files too)
            continue
        compared += _assert_same(functools.partial(_read_file, path))
    assert compared > 100


def test_edge_values_decode_as_pydicom_decodes_them() -> None:
    compared = 0
    for data in _edge_cases():
        compared += _assert_same(functools.partial(_read_bytes, data))
    assert compared > 300
