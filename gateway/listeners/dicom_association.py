"""One DICOM association as the acceptor: negotiation, C-STORE/C-ECHO requests, release, abort.

Runs on its own thread with blocking reads, so a message is served as soon as its last byte
arrives (no polling loop between the network and the handler). A data set is streamed from the
socket to a file in bounded chunks whatever the PDU or instance size, and handed to the handler
as a Part 10 file. The ARTIM timer bounds the wait for the A-ASSOCIATE-RQ and the idle timer the
wait for each later PDU (PS3.8 9.1.5).
"""

from __future__ import annotations

import io
import logging
import secrets
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Protocol

from gateway.dicom_header import DataSetDigest
from gateway.listeners import dicom_pdu as pdu
from gateway.listeners.part_files import EarlyWriteback, write_fully

log = logging.getLogger(__name__)

_COPY_CHUNK = 1024 * 1024
# Bounds what is buffered before the data set: an A-ASSOCIATE-RQ and a command set are small.
_MAX_ASSOCIATE_RQ = 1024 * 1024
_MAX_COMMAND = 64 * 1024


@dataclass(frozen=True, slots=True)
class AcceptancePolicy:
    """What the acceptor agrees to: AE titles, presentation contexts, PDU size, timers."""

    ae_title: str
    supported: Mapping[str, frozenset[str]]  # abstract syntax → transfer syntaxes accepted
    allowed_calling_aes: frozenset[str] = frozenset()
    check_called_ae: bool = False  # refuse associations addressed to another AE title
    max_pdu: int = 131072
    artim_seconds: float = 10.0
    idle_seconds: float = 60.0
    implementation_class_uid: str = ""
    implementation_version: str = ""


@dataclass(slots=True)
class Peer:
    """The requestor of one association."""

    address: str
    calling_ae: str = ""
    called_ae: str = ""
    state: dict[str, object] = field(default_factory=dict)  # the handler's per-association data


@dataclass(slots=True)
class StoreRequest:
    """A received C-STORE request and where its data set was written."""

    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: str
    data_set: Path  # a Part 10 file, removed after the handler returns unless it was `kept`
    data_set_sha256: str = ""  # of the data set's bytes, as gateway.dicom_header defines it
    abstract_syntax: str = ""  # of the presentation context the request came on
    data_set_at: int = 0  # where the data set starts in the file, after the file meta written
    kept: bool = False  # set by a handler that took the file over (it removes it later)


class DimseHandler(Protocol):
    """What the association calls; the handler maps its outcomes to statuses."""

    def store(self, peer: Peer, request: StoreRequest) -> tuple[int, str]:
        """Take responsibility for the instance; returns (status, error comment)."""

    def rejected(self, peer: Peer, reason: str) -> None:
        """An association request was rejected."""

    def closed(self, peer: Peer) -> None:
        """An accepted association ended (released, aborted or dropped)."""


class AssociationEnded(Exception):
    """The peer closed, aborted or released the association, or a timer ran out."""


class _Reader:
    """Buffered exact reads from the association's socket."""

    def __init__(self, stream: io.BufferedReader[socket.SocketIO]) -> None:
        self._stream = stream

    def exact(self, n: int) -> bytes:
        data = self._stream.read(n)
        if data is None or len(data) != n:
            raise AssociationEnded("connection closed by the peer")
        return data

    def copy(
        self,
        n: int,
        out: BinaryIO | None,
        buffer: memoryview,
        digest: DataSetDigest | None = None,
        writeback: EarlyWriteback | None = None,
    ) -> None:
        """Move the next n bytes to `out` (or drop them), a chunk at a time."""
        while n:
            view = buffer[: min(n, len(buffer))]
            got = self._stream.readinto(view)
            if not got:
                raise AssociationEnded("connection closed by the peer")
            if out is not None:
                write_fully(out, view[:got])
                if writeback is not None:
                    writeback.wrote(got)
            if digest is not None:
                digest.update(view[:got])
            n -= got


def negotiate(policy: AcceptancePolicy, request: pdu.AssociationRequest) -> list[pdu.ContextResult]:
    """The answer to each proposed presentation context (PS3.8 9.3.3.2)."""
    results = []
    for proposed in request.contexts:
        accepted = policy.supported.get(proposed.abstract_syntax)
        first = proposed.transfer_syntaxes[0] if proposed.transfer_syntaxes else ""
        if accepted is None:
            results.append(pdu.ContextResult(proposed.context_id, 3, first))
            continue
        # The first acceptable syntax in the requestor's order of preference, kept unchanged.
        chosen = next((t for t in proposed.transfer_syntaxes if t in accepted), None)
        if chosen is None:
            results.append(pdu.ContextResult(proposed.context_id, 4, first))
        else:
            results.append(pdu.ContextResult(proposed.context_id, 0, chosen))
    return results


class Association:
    """Serves one connection from A-ASSOCIATE-RQ to release or abort."""

    def __init__(
        self,
        sock: socket.socket,
        policy: AcceptancePolicy,
        handler: DimseHandler,
        incoming: Path,
        *,
        over_limit: Callable[[], bool] = lambda: False,
    ) -> None:
        self._sock = sock
        self._policy = policy
        self._handler = handler
        self._incoming = incoming
        self._over_limit = over_limit
        try:
            address = str(sock.getpeername()[0])
        except OSError:
            address = ""
        self.peer = Peer(address)
        self._contexts: dict[int, tuple[str, str]] = {}  # id → (abstract, transfer syntax)
        self._peer_max = 0
        self._buffer = memoryview(bytearray(_COPY_CHUNK))

    def serve(self) -> None:
        """Run the association to its end; never raises for what the peer does."""
        stream = io.BufferedReader(socket.SocketIO(self._sock, "rb"), 256 * 1024)
        reader = _Reader(stream)
        accepted = False
        try:
            self._sock.settimeout(self._policy.artim_seconds)
            accepted = self._associate(reader)
            if accepted:
                self._sock.settimeout(self._policy.idle_seconds or None)
                self._serve_messages(reader)
        except TimeoutError:
            log.info("association from %s timed out", self.peer.address or "?")
            if accepted:
                self._send(pdu.encode_abort(2, 0))
        except (AssociationEnded, ConnectionError) as exc:
            log.debug("association from %s ended: %s", self.peer.address, exc)
        except pdu.PduError as exc:
            log.warning("aborting association from %s: %s", self.peer.calling_ae, exc.message)
            self._send(pdu.encode_abort(2, 6 if accepted else 0))
        except OSError as exc:
            log.debug("association from %s failed: %s", self.peer.address, exc)
        finally:
            stream.close()
            if accepted:
                self._handler.closed(self.peer)

    def _send(self, data: bytes) -> None:
        try:
            self._sock.sendall(data)
        except OSError as exc:
            log.debug("could not send to %s: %s", self.peer.address, exc)

    def _read_pdu_header(self, reader: _Reader) -> tuple[int, int]:
        pdu_type, length = pdu.PDU_HEADER.unpack(reader.exact(6))
        return int(pdu_type), int(length)

    def _associate(self, reader: _Reader) -> bool:
        pdu_type, length = self._read_pdu_header(reader)
        if pdu_type != pdu.ASSOCIATE_RQ or length > _MAX_ASSOCIATE_RQ:
            raise pdu.PduError(f"expected an A-ASSOCIATE-RQ, got PDU type 0x{pdu_type:02X}")
        request = pdu.decode_associate_rq(reader.exact(length))
        self.peer.calling_ae, self.peer.called_ae = request.calling_ae, request.called_ae
        allowed = self._policy.allowed_calling_aes
        if allowed and request.calling_ae not in allowed:
            # Rejected-permanent, service user, calling AE title not recognised.
            self._send(pdu.encode_associate_rj(1, 1, 3))
            self._handler.rejected(self.peer, "calling AE title is not allowed")
            return False
        if self._policy.check_called_ae and request.called_ae != self._policy.ae_title:
            # Rejected-permanent, service user, called AE title not recognised (PS3.8 9.3.4).
            self._send(pdu.encode_associate_rj(1, 1, 7))
            self._handler.rejected(
                self.peer, f"called AE title {request.called_ae!r} is not {self._policy.ae_title!r}"
            )
            return False
        if self._over_limit():
            # Rejected-transient, service provider (presentation), local limit exceeded.
            self._send(pdu.encode_associate_rj(2, 3, 2))
            self._handler.rejected(self.peer, "too many concurrent associations")
            return False
        results = negotiate(self._policy, request)
        self._contexts = {
            r.context_id: (p.abstract_syntax, r.transfer_syntax)
            for r, p in zip(results, request.contexts, strict=True)
            if r.result == 0
        }
        self._peer_max = request.max_length
        self._send(
            pdu.encode_associate_ac(
                request,
                results,
                max_length=self._policy.max_pdu,
                implementation_class_uid=self._policy.implementation_class_uid,
                implementation_version=self._policy.implementation_version,
            )
        )
        return True

    def _serve_messages(self, reader: _Reader) -> None:
        while True:
            pdu_type, length = self._read_pdu_header(reader)
            if pdu_type == pdu.P_DATA_TF:
                self._serve_message(reader, length)
            elif pdu_type == pdu.RELEASE_RQ:
                reader.copy(length, None, self._buffer)
                self._send(pdu.encode_release_rp())
                return
            elif pdu_type == pdu.ABORT:
                reader.copy(length, None, self._buffer)
                raise AssociationEnded("aborted by the peer")
            else:
                raise pdu.PduError(f"unexpected PDU type 0x{pdu_type:02X}")

    def _serve_message(self, reader: _Reader, first_length: int) -> None:
        """Receive one DIMSE message, starting with a P-DATA-TF of `first_length` bytes."""
        command_parts: list[bytes] = []
        command: pdu.Command | None = None
        context_id = -1
        out: BinaryIO | None = None
        part: Path | None = None
        digest: DataSetDigest | None = None
        writeback: EarlyWriteback | None = None
        remaining = first_length
        try:
            while True:
                while remaining:
                    if remaining < 6:
                        raise pdu.PduError("PDV item header runs past the PDU")
                    item_length, pdv_context, control = pdu.PDV_HEADER.unpack(reader.exact(6))
                    value_length = item_length - 2
                    if item_length < 2 or item_length + 4 > remaining:
                        raise pdu.PduError("PDV item length does not fit the PDU")
                    remaining -= 4 + item_length
                    if context_id == -1:
                        context_id = pdv_context
                        if context_id not in self._contexts:
                            raise pdu.PduError(f"presentation context {context_id} not accepted")
                    elif pdv_context != context_id:
                        raise pdu.PduError("a message changed presentation context")
                    last = bool(control & 0x02)
                    if control & 0x01:
                        received = sum(map(len, command_parts))
                        if command is not None or received + value_length > _MAX_COMMAND:
                            # Checked before reading: a command set is never buffered unbounded.
                            raise pdu.PduError("command fragment out of place or too long")
                        command_parts.append(reader.exact(value_length))
                        if last:
                            command = pdu.decode_command(b"".join(command_parts))
                            if not command.has_data_set:
                                self._send(self._response(command, context_id, None)[0])
                                return
                            out, part, digest = self._open_data_set(command, context_id)
                            writeback = EarlyWriteback(out, written=digest.size)
                        continue
                    if command is None:
                        raise pdu.PduError("data set fragment before its command")
                    reader.copy(value_length, out, self._buffer, digest, writeback)
                    if last:
                        if remaining:
                            raise pdu.PduError("PDV items after the last data set fragment")
                        assert out is not None
                        assert part is not None
                        out.close()
                        out = None
                        assert digest is not None
                        response, kept = self._response(
                            command, context_id, part, digest.hexdigest(), digest.data_set_at
                        )
                        if kept:
                            part = None  # the handler took the file over
                        self._send(response)
                        return
                pdu_type, remaining = self._read_pdu_header(reader)
                if pdu_type == pdu.ABORT:
                    raise AssociationEnded("aborted by the peer mid-message")
                if pdu_type != pdu.P_DATA_TF:
                    raise pdu.PduError(f"PDU type 0x{pdu_type:02X} inside a DIMSE message")
        finally:
            if out is not None:
                out.close()
            if part is not None:
                part.unlink(missing_ok=True)

    def _open_data_set(
        self, command: pdu.Command, context_id: int
    ) -> tuple[BinaryIO, Path, DataSetDigest]:
        part = self._incoming / f".dimse-{secrets.token_hex(8)}.part"
        try:
            out: BinaryIO = open(part, "xb", buffering=0)  # noqa: SIM115 - closed by the caller
        except FileNotFoundError:
            # Made on the first data set, or again when removed behind the receiver's back.
            self._incoming.mkdir(parents=True, exist_ok=True)
            out = open(part, "xb", buffering=0)  # noqa: SIM115
        _abstract, transfer_syntax = self._contexts[context_id]
        header = pdu.encode_part10_header(
            command.affected_sop_class,
            command.affected_sop_instance,
            transfer_syntax,
            implementation_class_uid=self._policy.implementation_class_uid,
            implementation_version=self._policy.implementation_version,
            source_ae=self.peer.calling_ae,
        )
        write_fully(out, header)
        digest = DataSetDigest()
        digest.update(header)
        return out, part, digest

    def _response(
        self,
        command: pdu.Command,
        context_id: int,
        data_set: Path | None,
        sha256: str = "",
        data_set_at: int = 0,
    ) -> tuple[bytes, bool]:
        """The answer to the message, and True when the handler kept the data set's file."""
        kept = False
        operation = command.command_field
        if operation == pdu.C_STORE_RQ and data_set is not None:
            abstract, transfer_syntax = self._contexts[context_id]
            request = StoreRequest(
                command.affected_sop_class,
                command.affected_sop_instance,
                transfer_syntax,
                data_set,
                sha256,
                abstract,
                data_set_at,
            )
            status, comment = self._handler.store(self.peer, request)
            kept = request.kept
            response = pdu.encode_response(command, status, comment=comment)
        elif operation == pdu.C_STORE_RQ:
            log.warning("C-STORE without a data set from %s", self.peer.calling_ae)
            response = pdu.encode_response(
                command, pdu.STATUS_CANNOT_UNDERSTAND, comment="C-STORE without a data set"
            )
        elif operation == pdu.C_ECHO_RQ:
            response = pdu.encode_response(command, 0x0000, with_instance=False)
        else:
            response = pdu.encode_response(
                command, pdu.STATUS_UNRECOGNIZED_OPERATION, comment="operation not supported"
            )
        return pdu.encode_p_data(context_id, response, self._peer_max), kept
