"""The attributes of a received data set that ingest, assembly and the DICOMweb index need.

Untrusted bytes are decoded here only: any decoding failure becomes InvalidInput, which the DIMSE
edge answers with 0xC000 and STOW-RS with FailureReason 0xC000.
"""

from __future__ import annotations

import hashlib
import io
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset

from gateway.dicom_index import DecodedDataSet, index_attributes
from gateway.domain.errors import InvalidInput


@dataclass(frozen=True, slots=True)
class ParsedHeader:
    """The attributes of a received data set that ingest and assembly need."""

    sop_instance_uid: str
    sop_class_uid: str
    study_instance_uid: str
    series_instance_uid: str
    transfer_syntax_uid: str
    modality: str = ""
    patient_id: str = ""
    patient_name: str = ""
    accession_number: str = ""
    encounter_id: str = ""  # AdmissionID (0038,0010)
    body_part_examined: str = ""
    # NumberOfStudyRelatedInstances (0020,1208): the study is complete when this many arrived.
    expected_instances: int | None = None
    # QIDO-RS keys and WADO-RS metadata (gateway.dicom_index); empty when not indexed.
    attributes: Mapping[str, Any] = field(default_factory=dict)


def _text(ds: DecodedDataSet, keyword: str, limit: int) -> str:
    value = ds.get(keyword)
    return "" if value is None else str(value).strip()[:limit]


# Transfer syntaxes whose data set is read as it lies in the file: little endian, explicit VR
# for all but implicit VR little endian (encapsulated pixel data is explicit VR, PS3.5 A.4).
# Deflated and big endian data sets are left to pydicom's reader of the whole file.
_IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
_READ_THROUGH_PYDICOM = frozenset({"1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.2"})
_PIXEL_DATA_TAGS = frozenset({0x7FE00008, 0x7FE00009, 0x7FE00010})
# Any of the pixel data tags as little endian bytes: one scan that stops at the first.
_PIXEL_DATA_TAG_BYTES = re.compile(
    b"|".join(re.escape(struct.pack("<HH", tag >> 16, tag & 0xFFFF)) for tag in _PIXEL_DATA_TAGS)
)
HEADER_READ = 64 * 1024  # bytes of a received file read at once for its header


def _before_pixels(tag: int, _vr: str | None, _length: int) -> bool:
    return tag in _PIXEL_DATA_TAGS


def _read_data_set(path: Path, data_set_at: int, transfer_syntax: str) -> tuple[Dataset, str]:
    if not data_set_at or not transfer_syntax or transfer_syntax in _READ_THROUGH_PYDICOM:
        whole = pydicom.dcmread(path, stop_before_pixels=True, force=False)
        return whole, str(whole.file_meta.get("TransferSyntaxUID", "")).strip()
    # The receiver wrote the file meta itself: the data set is read from where it starts,
    # without decoding the meta information again (a third of dcmread's time on a CT slice).
    implicit = transfer_syntax == _IMPLICIT_VR_LITTLE_ENDIAN
    with path.open("rb", buffering=0) as raw:
        head = raw.read(HEADER_READ) or b""
        read_all = len(head) < HEADER_READ and not raw.read(1)
        # pydicom asks a file for its position at every element, one system call each (and a
        # turn of the interpreter lock); a header that lies in the first bytes is read from
        # memory. It does when the whole file was read, or when the bytes of a pixel data tag
        # are there and the reading stopped before the end of what was read.
        if read_all or _PIXEL_DATA_TAG_BYTES.search(head):
            memory = io.BytesIO(head)
            memory.seek(data_set_at)
            dataset = read_dataset(memory, implicit, True, stop_when=_before_pixels)
            if read_all or memory.tell() < len(head):
                return dataset, transfer_syntax
        raw.seek(data_set_at)
        with io.BufferedReader(raw) as fh:
            dataset = read_dataset(fh, implicit, True, stop_when=_before_pixels)
    return dataset, transfer_syntax


def parse_header(path: Path, *, data_set_at: int = 0, transfer_syntax: str = "") -> ParsedHeader:
    """Read the header of a DICOM Part 10 file; raises InvalidInput when it cannot be understood.

    A receiver that wrote the file meta itself passes where the data set starts and the
    transfer syntax it negotiated, and the meta information is not read back.
    """
    try:
        dataset, syntax = _read_data_set(path, data_set_at, transfer_syntax)
        # pydicom decodes values on access, so every value is read inside this guard; each
        # element is decoded once, for the header and the index alike.
        ds = DecodedDataSet(dataset)
        uids = {k: _text(ds, k, 200) for k in ("StudyInstanceUID", "SOPInstanceUID", "SOPClassUID")}
        header = ParsedHeader(
            sop_instance_uid=uids["SOPInstanceUID"],
            sop_class_uid=uids["SOPClassUID"],
            study_instance_uid=uids["StudyInstanceUID"],
            series_instance_uid=_text(ds, "SeriesInstanceUID", 64),
            transfer_syntax_uid=syntax,
            modality=_text(ds, "Modality", 16).upper(),
            patient_id=_text(ds, "PatientID", 64),
            patient_name=_text(ds, "PatientName", 200),
            accession_number=_text(ds, "AccessionNumber", 64),
            encounter_id=_text(ds, "AdmissionID", 64),
            body_part_examined=_text(ds, "BodyPartExamined", 64),
            expected_instances=_count(ds.get("NumberOfStudyRelatedInstances")),
            attributes=index_attributes(dataset, ds),
        )
    except OSError:
        raise
    except Exception as exc:
        # Any decoding failure of untrusted bytes means the data set cannot be understood.
        raise InvalidInput(f"cannot parse data set: {type(exc).__name__}") from exc
    for keyword, value in uids.items():
        if not value:
            raise InvalidInput(f"{keyword} is missing")
        if len(value) > 64:
            raise InvalidInput(f"{keyword} is longer than 64 characters")
    if not header.transfer_syntax_uid:
        raise InvalidInput("file meta has no TransferSyntaxUID")
    return header


def _count(value: object) -> int | None:
    # IS may be empty, multi-valued by mistake or nonsense; only a plausible count is used.
    try:
        count = int(str(value).strip()) if value not in (None, "") else 0
    except ValueError:
        return None
    return count if 0 < count < 1_000_000 else None


_HEAD = 144  # preamble, "DICM" and the (0002,0000) element
# The most of a file's first bytes a digest keeps to find the transfer syntax: group 0002 is a
# few hundred bytes; a larger one is read by pydicom (the slow path), never kept in memory.
FILE_META_LIMIT = 64 * 1024
# Explicit VR elements with 2 reserved bytes and a 4-byte length (PS3.5 7.1.2); the others in
# the list below have a 2-byte length. Any other VR makes the group irregular.
_LONG_LENGTH_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)
_SHORT_LENGTH_VRS = frozenset(
    {b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FD", b"FL", b"IS", b"LO", b"LT", b"PN"}
    | {b"SH", b"SL", b"SS", b"ST", b"TM", b"UI", b"UL", b"US"}
)
_UID = re.compile(r"[0-9]+(\.[0-9]+)*")


def _offset_in(head: bytes) -> int:
    # (0002,0000) UL, explicit VR little endian, is required first (PS3.10 7.1).
    if len(head) == _HEAD and head[128:132] == b"DICM" and head[132:138] == b"\x02\x00\x00\x00UL":
        return _HEAD + int.from_bytes(head[140:144], "little")
    return 0


def file_meta_transfer_syntax(head: bytes, data_set_at: int) -> str | None:
    """TransferSyntaxUID (0002,0010) of a Part 10 file from its first bytes; None if irregular.

    `head` holds the file up to `data_set_at` and the 2 bytes after it. The group 0002 elements
    (explicit VR little endian, PS3.10 7.1) are walked from (0002,0000): each must be of group
    0002, in ascending order, of a known VR and within the group length, and the walk must end
    exactly where the data set starts; the element there must be of neither group 0002 nor
    group 0000. Reading the data set from `data_set_at` then reads what pydicom reads after the
    meta it decodes itself, so a group length that lies can never move where the data set is
    read from: it gives None, and the caller leaves the whole file to pydicom.
    """
    if len(head) < data_set_at + 2 or _offset_in(head[:_HEAD]) != data_set_at:
        return None
    if head[138:140] != b"\x04\x00":  # (0002,0000) UL holds 4 bytes
        return None
    position, last, syntax = _HEAD, 0x0000, b""
    while position < data_set_at:
        if position + 8 > data_set_at or head[position : position + 2] != b"\x02\x00":
            return None
        element = int.from_bytes(head[position + 2 : position + 4], "little")
        vr = head[position + 4 : position + 6]
        if element <= last:
            return None
        if vr in _SHORT_LENGTH_VRS:
            start = position + 8
            length = int.from_bytes(head[position + 6 : start], "little")
        elif vr in _LONG_LENGTH_VRS:
            start = position + 12
            length = int.from_bytes(head[position + 8 : start], "little")
        else:
            return None  # unknown, or SQ, whose items pydicom would parse
        position, last = start + length, element
        if position > data_set_at:
            return None
        if element == 0x0010:
            if vr != b"UI":
                return None
            syntax = head[start:position]
    # pydicom reads on while the group is 0002, then group 0000 as a command set.
    if head[data_set_at : data_set_at + 2] in (b"\x00\x00", b"\x02\x00"):
        return None
    text = syntax.decode("latin-1").rstrip("\0 ")
    return text if _UID.fullmatch(text) else None


def data_set_offset(path: Path) -> int:
    """Where the data set starts in a Part 10 file whose group 0002 walks regular; else 0.

    The offset bounds the instance's identity hash (the same data set sent with other file meta
    is the same instance). A group length the meta's elements do not end at could leave the
    first data-set bytes out of that hash, and a resend differing only there would pass for a
    duplicate: such a file, or one with an oversized meta, is hashed whole.
    """
    with path.open("rb") as fh:
        head = fh.read(_HEAD)
        offset = _offset_in(head)
        if not offset or offset + 2 > FILE_META_LIMIT:
            return 0
        head += fh.read(offset + 2 - _HEAD)
    return offset if file_meta_transfer_syntax(head, offset) is not None else 0


class DataSetDigest:
    """SHA-256 of a Part 10 file's data set (after its claimed group 0002), fed as it arrives.

    Lets a receiver hash the bytes while writing them, so the spool need not read them back;
    it also keeps the file meta (up to FILE_META_LIMIT) for `transfer_syntax`. The offset is
    the group length's claim: when `transfer_syntax` is None the file meta was not written by
    the receiver and does not walk regular, and the digest is not the instance's identity
    (`data_set_offset` hashes such a file whole).
    """

    def __init__(self) -> None:
        self._digest = hashlib.sha256()
        # The first 144 bytes until the data set offset is known; then, if the meta is small
        # enough, on to 2 bytes past the offset (what `file_meta_transfer_syntax` needs).
        self._head = bytearray()
        self._keep = _HEAD
        self._offset: int | None = None
        self.size = 0

    def update(self, chunk: bytes | bytearray | memoryview) -> None:
        """Take the next bytes of the file."""
        view = memoryview(chunk)
        start = self.size
        self.size += len(view)
        if self._offset is None:
            self._head += view[: max(0, _HEAD - start)]
            if len(self._head) < _HEAD:
                return
            head = bytes(self._head)
            self._offset = _offset_in(head)
            keep = self._offset + 2
            self._keep = keep if self._offset and keep <= FILE_META_LIMIT else _HEAD
            # Bytes fed before the offset was known and beyond it are hashed now.
            self._digest.update(head[self._offset :])
            skip = max(self._offset, _HEAD) - start
        else:
            skip = self._offset - start
        if len(self._head) < self._keep:
            self._head += view[len(self._head) - start : self._keep - start]
        if skip < len(view):
            self._digest.update(view[max(0, skip) :])

    @property
    def data_set_at(self) -> int:
        """Where the data set starts (0 until 144 bytes were fed, or without Part 10 meta)."""
        return self._offset or 0

    @property
    def transfer_syntax(self) -> str | None:
        """The file meta's TransferSyntaxUID when its group 0002 is regular, else None."""
        if not self._offset or len(self._head) < self._keep:
            return None
        return file_meta_transfer_syntax(bytes(self._head), self._offset)

    def hexdigest(self) -> str:
        """The digest; a file shorter than 144 bytes is hashed whole (offset 0)."""
        if self._offset is None:
            return hashlib.sha256(self._head).hexdigest()
        return self._digest.hexdigest()
