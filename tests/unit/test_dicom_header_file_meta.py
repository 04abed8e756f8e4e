"""The transfer syntax a STOW-RS part's own file meta names, walked as the part streams in.

The meta comes from the client: the header is read from the data set offset only when group
0002 walks regular up to it, and must then be exactly what pydicom gives reading the whole file.
Whatever is irregular (a group length that lies, a truncated or oversized meta) yields None, and
the whole file goes to pydicom as before.
"""

from __future__ import annotations

import struct
import warnings
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    generate_uid,
)

from gateway.dicom_header import (
    FILE_META_LIMIT,
    DataSetDigest,
    data_set_offset,
    file_meta_transfer_syntax,
    parse_header,
)
from gateway.domain.errors import InvalidInput
from tests.unit.test_dicom_header import FILES

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


def write_ct(path: Path, syntax: str, *, rows: int = 16, private_information: bytes = b"") -> Path:
    """A CT slice of `rows`² 16-bit pixels in `syntax`; optional meta elements of long VRs."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(CT_IMAGE_STORAGE)
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = UID(syntax)
    meta.SourceApplicationEntityTitle = "MODALITY"
    if private_information:
        meta.PrivateInformationCreatorUID = generate_uid()
        meta.PrivateInformation = private_information  # OB: reserved bytes and a 4-byte length
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "CT"
    ds.PatientID = "PAT-1"
    ds.PatientName = "Müller^Jürgen"
    ds.AccessionNumber = "ACC-1"
    ds.BodyPartExamined = "HEAD"
    ds.NumberOfStudyRelatedInstances = "300"
    ds.ImagePositionPatient = [0.0, 0.0, -12.5]
    ds.Rows = ds.Columns = rows
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.SamplesPerPixel = 1
    ds.PixelRepresentation = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.RescaleIntercept, ds.RescaleSlope = "-1024", "1"
    ds.PixelData = bytes(range(256)) * (rows * rows * 2 // 256)
    pydicom.dcmwrite(path, ds, enforce_file_format=True)
    return path


def _digest(data: bytes, size: int = 1000) -> DataSetDigest:
    digest = DataSetDigest()
    for start in range(0, len(data), size):
        digest.update(data[start : start + size])
    return digest


def _outcome(path: Path, digest: DataSetDigest | None = None) -> object:
    """What `parse_header` gives: as StowRequest calls it with the digest, or the whole file."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            if digest is None:
                return parse_header(path)
            return parse_header(
                path,
                data_set_at=digest.data_set_at,
                transfer_syntax=digest.transfer_syntax or "",
            )
        except InvalidInput as exc:
            return ("InvalidInput", exc.message)


SYNTAXES = [
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,  # named, then read whole by pydicom
    ExplicitVRBigEndian,  # idem
]


@pytest.mark.parametrize("syntax", SYNTAXES, ids=lambda s: UID(s).name)
@pytest.mark.parametrize("private_information", [b"", b"\x01" * 301], ids=["plain", "ob"])
@pytest.mark.parametrize("size", [1, 150, 1 << 20])
def test_the_fast_path_reads_what_pydicom_reads(
    tmp_path: Path, syntax: str, private_information: bytes, size: int
) -> None:
    path = write_ct(tmp_path / "ct.dcm", syntax, private_information=private_information)
    digest = _digest(path.read_bytes(), size)
    assert digest.data_set_at == data_set_offset(path)
    assert digest.transfer_syntax == syntax
    whole = _outcome(path)
    assert not isinstance(whole, tuple)
    assert _outcome(path, digest) == whole


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_pydicoms_test_files_give_their_syntax_or_none_and_the_same_header(path: Path) -> None:
    digest = _digest(path.read_bytes())
    meta = pydicom.filereader.read_file_meta_info(path)
    assert digest.transfer_syntax in (None, str(meta.TransferSyntaxUID).strip())
    assert _outcome(path, digest) == _outcome(path)


def _elements(data: bytes) -> list[tuple[int, int, int]]:
    """(element, start, end) of each group 0002 element after (0002,0000) of a regular file."""
    position, found = 144, []
    while data[position : position + 2] == b"\x02\x00":
        element = int.from_bytes(data[position + 2 : position + 4], "little")
        if data[position + 4 : position + 6] in (b"OB", b"UN"):
            end = position + 12 + int.from_bytes(data[position + 8 : position + 12], "little")
        else:
            end = position + 8 + int.from_bytes(data[position + 6 : position + 8], "little")
        found.append((element, position, end))
        position = end
    return found


def _with_group_length(data: bytes, length: int) -> bytes:
    return data[:140] + struct.pack("<I", length) + data[144:]


def _regular(tmp_path: Path) -> bytes:
    return write_ct(tmp_path / "regular.dcm", ExplicitVRLittleEndian).read_bytes()


def irregular_metas(data: bytes) -> dict[str, bytes]:
    """Variants of a regular file whose group 0002 pydicom reads otherwise than the walk would."""
    elements = _elements(data)
    offset = elements[-1][2]
    last_start = elements[-1][1]
    syntax_start = next(start for element, start, _ in elements if element == 0x0010)
    return {
        # The offset falls inside the last element of the group.
        "into-an-element": _with_group_length(data, offset - 3 - 144),
        # An element of the data set counted into group 0002.
        "over-the-data-set": _with_group_length(data, offset + 8 + 10 - 144),
        # Ends on an element boundary, but pydicom would read the last element as meta.
        "short-of-the-last-element": _with_group_length(data, last_start - 144),
        "unknown-vr": data[: syntax_start + 4] + b"ZZ" + data[syntax_start + 6 :],
        "syntax-not-ui": data[: syntax_start + 4] + b"LO" + data[syntax_start + 6 :],
        "elements-out-of-order": (
            data[:syntax_start] + b"\x02\x00\x01\x00" + data[syntax_start + 4 :]
        ),
        "group-length-of-8-bytes": data[:138] + b"\x08\x00" + data[140:],
    }


def test_irregular_metas_give_no_syntax_and_the_whole_files_header(tmp_path: Path) -> None:
    assert _digest(_regular(tmp_path)).transfer_syntax == ExplicitVRLittleEndian
    for name, data in irregular_metas(_regular(tmp_path)).items():
        path = tmp_path / f"{name}.dcm"
        path.write_bytes(data)
        digest = _digest(data)
        assert digest.transfer_syntax is None, name
        assert _outcome(path, digest) == _outcome(path), name


def test_the_walk_refuses_what_it_cannot_vouch_for(tmp_path: Path) -> None:
    data = _regular(tmp_path)
    offset = data_set_offset(tmp_path / "regular.dcm")
    assert file_meta_transfer_syntax(data[: offset + 2], offset) == ExplicitVRLittleEndian
    assert file_meta_transfer_syntax(data[: offset + 1], offset) is None  # truncated
    assert file_meta_transfer_syntax(data[:200], offset) is None
    assert file_meta_transfer_syntax(data[: offset + 2], offset + 2) is None  # not its offset
    # The data set starting with group 0000 or 0002 (pydicom would read either as a header).
    for group in (b"\x00\x00", b"\x02\x00"):
        assert file_meta_transfer_syntax(data[:offset] + group, offset) is None
    # A transfer syntax that is not a plain UID.
    elements = {element: (start, end) for element, start, end in _elements(data)}
    start, end = elements[0x0010]
    for value in (b"1.2.840.10008.1.2\\1.2", b"1.2.840.10008.1.2x", b"\x00" * (end - start - 8)):
        value = value.ljust(end - start - 8, b"\x00")[: end - start - 8]
        changed = data[: start + 8] + value + data[end:]
        assert file_meta_transfer_syntax(changed[: offset + 2], offset) is None, value
    # Without (0002,0010) at all: pydicom has no syntax either.
    without = data[:start] + data[end:]
    without = _with_group_length(without, offset - (end - start) - 144)
    assert file_meta_transfer_syntax(without, offset - (end - start)) is None


def test_a_truncated_meta_names_no_syntax(tmp_path: Path) -> None:
    data = _regular(tmp_path)
    offset = data_set_offset(tmp_path / "regular.dcm")
    for cut in (100, 144, 200, offset, offset + 1):
        path = tmp_path / f"cut-{cut}.dcm"
        path.write_bytes(data[:cut])
        digest = _digest(data[:cut], 7)
        assert digest.transfer_syntax is None, cut
        assert _outcome(path, digest) == _outcome(path)


def test_an_oversized_meta_is_not_kept_and_goes_to_pydicom(tmp_path: Path) -> None:
    path = write_ct(
        tmp_path / "big-meta.dcm", ExplicitVRLittleEndian, private_information=b"\x01" * 70_000
    )
    data = path.read_bytes()
    digest = _digest(data, 4096)
    assert digest.data_set_at > FILE_META_LIMIT
    assert digest.transfer_syntax is None
    assert data_set_offset(path) == 0  # its identity hash covers the whole file
    header = _outcome(path, digest)
    assert header == _outcome(path)
    assert not isinstance(header, tuple)  # a valid file all the same, read the slow way


def test_a_file_whose_meta_does_not_walk_regular_is_hashed_whole(tmp_path: Path) -> None:
    # data_set_offset bounds the identity hash; a group length the elements do not end at must
    # not leave data-set bytes out of it.
    data = _regular(tmp_path)
    assert data_set_offset(tmp_path / "regular.dcm") == _digest(data).data_set_at > 144
    for name, variant in irregular_metas(data).items():
        path = tmp_path / f"{name}.dcm"
        path.write_bytes(variant)
        assert data_set_offset(path) == 0, name
