"""DICOM Upper Layer PDUs and DIMSE command sets, as bytes (PS3.8 9.3, PS3.7 9.3 and E.1).

Only what an acceptor of C-STORE and C-ECHO needs: decoding an A-ASSOCIATE-RQ and a request
command set (the PDU and PDV item headers are read with PDU_HEADER and PDV_HEADER while the
data streams past), and encoding the PDUs, responses and Part 10 header it writes. No I/O here;
malformed input raises PduError, which the association answers with an A-ABORT.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass, field

from gateway.domain.errors import GatewayError

# PDU types (PS3.8 Table 9-11 and following).
ASSOCIATE_RQ = 0x01
ASSOCIATE_AC = 0x02
ASSOCIATE_RJ = 0x03
P_DATA_TF = 0x04
RELEASE_RQ = 0x05
RELEASE_RP = 0x06
ABORT = 0x07

APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
PDU_HEADER = struct.Struct(">BxI")
PDV_HEADER = struct.Struct(">IBB")
_ITEM_HEADER = struct.Struct(">BxH")

# DIMSE command fields (PS3.7 Table E.1-1) and the "no data set" marker.
C_STORE_RQ = 0x0001
C_ECHO_RQ = 0x0030
NO_DATA_SET = 0x0101
STATUS_UNRECOGNIZED_OPERATION = 0x0211
STATUS_CANNOT_UNDERSTAND = 0xC000


class PduError(GatewayError):
    """A PDU or command set that does not follow PS3.8/PS3.7."""

    code = "invalid-pdu"


@dataclass(frozen=True, slots=True)
class ProposedContext:
    """A presentation context item of an A-ASSOCIATE-RQ."""

    context_id: int
    abstract_syntax: str
    transfer_syntaxes: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class AssociationRequest:
    """The decoded A-ASSOCIATE-RQ."""

    called_ae: str
    calling_ae: str
    contexts: tuple[ProposedContext, ...]
    max_length: int = 0  # the requestor's maximum PDU length; 0 = unlimited
    implementation_class_uid: str = ""
    raw_called_ae: bytes = b" " * 16
    raw_calling_ae: bytes = b" " * 16


@dataclass(frozen=True, slots=True)
class ContextResult:
    """The acceptor's answer to one proposed presentation context (PS3.8 Table 9-18)."""

    context_id: int
    result: int  # 0 acceptance, 3 abstract syntax not supported, 4 transfer syntaxes not
    transfer_syntax: str


@dataclass(slots=True)
class Command:
    """A decoded DIMSE request command set; values by tag (group 0000 element number)."""

    values: dict[int, bytes] = field(default_factory=dict)

    def uid(self, element: int) -> str:
        """A UI value, without its padding."""
        return self.values.get(element, b"").rstrip(b"\x00 ").decode("ascii", "replace")

    def ushort(self, element: int) -> int:
        """A US value; raises PduError when absent or malformed."""
        raw = self.values.get(element)
        if raw is None or len(raw) != 2:
            raise PduError(f"command element (0000,{element:04X}) missing or malformed")
        return int.from_bytes(raw, "little")

    @property
    def command_field(self) -> int:
        """(0000,0100) Command Field."""
        return self.ushort(0x0100)

    @property
    def message_id(self) -> int:
        """(0000,0110) Message ID."""
        return self.ushort(0x0110)

    @property
    def has_data_set(self) -> bool:
        """(0000,0800) Command Data Set Type other than 0x0101."""
        return self.ushort(0x0800) != NO_DATA_SET

    @property
    def affected_sop_class(self) -> str:
        """(0000,0002) Affected SOP Class UID."""
        return self.uid(0x0002)

    @property
    def affected_sop_instance(self) -> str:
        """(0000,1000) Affected SOP Instance UID."""
        return self.uid(0x1000)


def _text(raw: bytes) -> str:
    return raw.decode("ascii", "replace").strip(" \x00")


def _items(body: bytes | memoryview, start: int, end: int) -> Iterator[tuple[int, int, int]]:
    """(type, value start, value end) of the items between start and end."""
    offset = start
    while offset < end:
        if offset + 4 > end:
            raise PduError("item header runs past the PDU")
        item_type, length = _ITEM_HEADER.unpack_from(body, offset)
        value = offset + 4
        if value + length > end:
            raise PduError(f"item 0x{item_type:02X} runs past the PDU")
        yield item_type, value, value + length
        offset = value + length


def decode_associate_rq(body: bytes) -> AssociationRequest:
    """Decode the body (after the 6-byte PDU header) of an A-ASSOCIATE-RQ (PS3.8 9.3.2)."""
    if len(body) < 68:
        raise PduError("A-ASSOCIATE-RQ shorter than its fixed fields")
    raw_called, raw_calling = bytes(body[4:20]), bytes(body[20:36])
    contexts: list[ProposedContext] = []
    max_length = 0
    implementation = ""
    application_context = ""
    for item_type, start, end in _items(body, 68, len(body)):
        if item_type == 0x10:
            application_context = _text(body[start:end])
        elif item_type == 0x20:
            if end - start < 4:
                raise PduError("presentation context item too short")
            context_id = body[start]
            abstract = ""
            syntaxes: list[str] = []
            for sub_type, s_start, s_end in _items(body, start + 4, end):
                if sub_type == 0x30:
                    abstract = _text(body[s_start:s_end])
                elif sub_type == 0x40:
                    syntaxes.append(_text(body[s_start:s_end]))
            contexts.append(ProposedContext(context_id, abstract, tuple(syntaxes)))
        elif item_type == 0x50:
            for sub_type, s_start, s_end in _items(body, start, end):
                if sub_type == 0x51 and s_end - s_start == 4:
                    max_length = int.from_bytes(body[s_start:s_end], "big")
                elif sub_type == 0x52:
                    implementation = _text(body[s_start:s_end])
    if not application_context:
        raise PduError("A-ASSOCIATE-RQ without an application context")
    return AssociationRequest(
        called_ae=_text(raw_called),
        calling_ae=_text(raw_calling),
        contexts=tuple(contexts),
        max_length=max_length,
        implementation_class_uid=implementation,
        raw_called_ae=raw_called,
        raw_calling_ae=raw_calling,
    )


def _item(item_type: int, value: bytes) -> bytes:
    return _ITEM_HEADER.pack(item_type, len(value)) + value


def _pdu(pdu_type: int, body: bytes) -> bytes:
    return PDU_HEADER.pack(pdu_type, len(body)) + body


def _uid(value: str) -> bytes:
    return value.encode("ascii")


def encode_associate_ac(
    request: AssociationRequest,
    results: list[ContextResult],
    *,
    max_length: int,
    implementation_class_uid: str,
    implementation_version: str,
) -> bytes:
    """An A-ASSOCIATE-AC answering `request` (PS3.8 9.3.3)."""
    items = [_item(0x10, _uid(APPLICATION_CONTEXT))]
    for r in results:
        ts = _item(0x40, _uid(r.transfer_syntax))
        items.append(_item(0x21, bytes((r.context_id, 0, r.result, 0)) + ts))
    user = (
        _item(0x51, max_length.to_bytes(4, "big"))
        + _item(0x52, _uid(implementation_class_uid))
        + _item(0x55, implementation_version.encode("ascii")[:16])
    )
    items.append(_item(0x50, user))
    fixed = b"\x00\x01\x00\x00" + request.raw_called_ae + request.raw_calling_ae + b"\x00" * 32
    return _pdu(ASSOCIATE_AC, fixed + b"".join(items))


def encode_associate_rj(result: int, source: int, reason: int) -> bytes:
    """An A-ASSOCIATE-RJ (PS3.8 9.3.4)."""
    return _pdu(ASSOCIATE_RJ, bytes((0, result, source, reason)))


def encode_release_rp() -> bytes:
    """An A-RELEASE-RP (PS3.8 9.3.7)."""
    return _pdu(RELEASE_RP, b"\x00" * 4)


def encode_abort(source: int = 2, reason: int = 0) -> bytes:
    """An A-ABORT; source 2 is the service provider (PS3.8 9.3.8)."""
    return _pdu(ABORT, bytes((0, 0, source, reason)))


def decode_command(raw: bytes) -> Command:
    """Decode a command set (Implicit VR Little Endian, group 0000 only; PS3.7 6.3.1)."""
    values: dict[int, bytes] = {}
    offset, end = 0, len(raw)
    while offset < end:
        if offset + 8 > end:
            raise PduError("command element header runs past the command set")
        group, element, length = struct.unpack_from("<HHI", raw, offset)
        offset += 8
        if group != 0x0000 or offset + length > end:
            raise PduError("command set element outside group 0000 or past its end")
        values[element] = raw[offset : offset + length]
        offset += length
    return Command(values)


def _element(element: int, value: bytes) -> bytes:
    if len(value) % 2:
        value += b"\x00"  # UI values are padded with NUL, text with space; only UIs are odd here
    return struct.pack("<HHI", 0, element, len(value)) + value


def encode_response(
    request: Command, status: int, *, comment: str = "", with_instance: bool = True
) -> bytes:
    """The response command set to `request` with `status` (PS3.7 9.3.1.2, 9.3.5.2)."""
    body = _element(0x0002, _uid(request.affected_sop_class))
    body += _element(0x0100, (request.command_field | 0x8000).to_bytes(2, "little"))
    body += _element(0x0120, request.message_id.to_bytes(2, "little"))
    body += _element(0x0800, NO_DATA_SET.to_bytes(2, "little"))
    body += _element(0x0900, status.to_bytes(2, "little"))
    if comment:
        text = comment.encode("ascii", "replace")[:64]
        body += _element(0x0902, text + (b" " if len(text) % 2 else b""))
    if with_instance and request.affected_sop_instance:
        body += _element(0x1000, _uid(request.affected_sop_instance))
    return _element(0x0000, len(body).to_bytes(4, "little")) + body


def encode_p_data(context_id: int, command: bytes, max_length: int) -> bytes:
    """A command set as P-DATA-TF PDUs, each within the peer's maximum length (PS3.8 9.3.5)."""
    room = (max_length - 6) if max_length else len(command)
    room = max(room, 1)
    pdus = []
    for start in range(0, len(command), room):
        fragment = command[start : start + room]
        last = start + room >= len(command)
        control = 0x03 if last else 0x01  # command fragment, last or not
        pdv = PDV_HEADER.pack(len(fragment) + 2, context_id, control) + fragment
        pdus.append(_pdu(P_DATA_TF, pdv))
    return b"".join(pdus)


def _explicit(element: int, vr: bytes, value: bytes) -> bytes:
    if vr == b"OB":
        return struct.pack("<HH2sHI", 0x0002, element, vr, 0, len(value)) + value
    return struct.pack("<HH2sH", 0x0002, element, vr, len(value)) + value


def _padded(value: str, pad: bytes) -> bytes:
    raw = value.encode("ascii", "replace")
    return raw + pad if len(raw) % 2 else raw


def encode_part10_header(
    sop_class_uid: str,
    sop_instance_uid: str,
    transfer_syntax: str,
    *,
    implementation_class_uid: str,
    implementation_version: str,
    source_ae: str,
) -> bytes:
    """Preamble, prefix and File Meta Information of a Part 10 file (PS3.10 7.1)."""
    elements = _explicit(0x0001, b"OB", b"\x00\x01")
    elements += _explicit(0x0002, b"UI", _padded(sop_class_uid, b"\x00"))
    elements += _explicit(0x0003, b"UI", _padded(sop_instance_uid, b"\x00"))
    elements += _explicit(0x0010, b"UI", _padded(transfer_syntax, b"\x00"))
    elements += _explicit(0x0012, b"UI", _padded(implementation_class_uid, b"\x00"))
    elements += _explicit(0x0013, b"SH", _padded(implementation_version[:16], b" "))
    if source_ae:
        elements += _explicit(0x0016, b"AE", _padded(source_ae[:16], b" "))
    group_length = _explicit(0x0000, b"UL", len(elements).to_bytes(4, "little"))
    return b"\x00" * 128 + b"DICM" + group_length + elements
