"""DIMSE edge: Storage SCP and Verification SCP (PS3.4 Annex B and A) over pynetdicom.

pynetdicom runs one thread per association; the C-STORE handler only hands the received file to
the core (`parse_header`, `InstanceRecorder.record`) and translates the core's errors into DIMSE
statuses once, here. Data sets arrive as files (chunked receive), so memory stays bounded whatever
the instance size, and are stored unchanged in the transfer syntax they were sent in.
"""

from __future__ import annotations

import logging
import secrets
import shutil
import socket
import ssl
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydicom import Dataset
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, _config, evt
from pynetdicom.dsutils import encode_file_meta

from gateway.dicom_services import (
    STORAGE_SOP_CLASSES,
    TRANSFER_SYNTAXES,
    VERIFICATION_SOP_CLASS,
    StoreStatus,
)
from gateway.domain.errors import InvalidInput, OutOfResources
from gateway.ingest import InstanceRecorder, parse_header
from gateway.settings import DicomSettings, Settings
from gateway.transfer_audit import TransferTally, audit_transfer

log = logging.getLogger(__name__)

_PART10_MAGIC = b"DICM"
_PREAMBLE = 128


__all__ = ["DimseListener", "StoreStatus", "part10_file", "tls_context"]


def tls_context(dicom: DicomSettings) -> ssl.SSLContext | None:
    """The server TLS context from configured PEM files (PS3.15 B.1 secure transport), or None."""
    if not (dicom.tls_certificate and dicom.tls_private_key):
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(dicom.tls_certificate, dicom.tls_private_key)
    if dicom.tls_ca_certificates:
        context.load_verify_locations(dicom.tls_ca_certificates)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def _status(status: StoreStatus, comment: str = "") -> Dataset:
    rsp = Dataset()
    rsp.Status = int(status)
    if comment:
        rsp.ErrorComment = comment[:64]  # LO
    return rsp


@contextmanager
def part10_file(received: Path, file_meta: Any) -> Iterator[Path]:
    """The received data set as a DICOM Part 10 file (PS3.10 7.1), adding file meta if absent."""
    with received.open("rb") as fh:
        head = fh.read(_PREAMBLE + len(_PART10_MAGIC))
    if head[_PREAMBLE:] == _PART10_MAGIC:
        yield received
        return
    # Some pynetdicom releases write only the bare data set; the file meta then comes from the
    # presentation context the data set was sent in, and the data set bytes are kept unchanged.
    with (
        tempfile.NamedTemporaryFile(dir=received.parent, suffix=".dcm", delete=False) as out,
        received.open("rb") as src,
    ):
        out.write(b"\x00" * _PREAMBLE + _PART10_MAGIC + encode_file_meta(file_meta))
        shutil.copyfileobj(src, out, 1024 * 1024)
    wrapped = Path(out.name)
    try:
        yield wrapped
    finally:
        wrapped.unlink(missing_ok=True)


class DimseListener:
    """The gateway's DICOM application entity: C-STORE and C-ECHO SCP."""

    def __init__(self, settings: Settings, recorder: InstanceRecorder) -> None:
        self._settings = settings
        self._recorder = recorder
        self._server: Any = None
        self._ae = AE(ae_title=settings.dicom.ae_title)
        self._ae.maximum_pdu_size = settings.dicom.max_pdu
        self._ae.maximum_associations = settings.dicom.maximum_associations
        # Also the ARTIM timeout: a connection that never requests an association (a port probe,
        # a load balancer's check) keeps a slot until it expires.
        self._ae.acse_timeout = settings.dicom.acse_timeout_seconds
        self._ae.require_calling_aet = list(settings.dicom.allowed_calling_aes)
        self._ae.add_supported_context(VERIFICATION_SOP_CLASS, ALL_TRANSFER_SYNTAXES)
        for sop_class in STORAGE_SOP_CLASSES:
            # Every listed transfer syntax is accepted as proposed: instances are stored unchanged.
            self._ae.add_supported_context(sop_class, list(TRANSFER_SYNTAXES))
        self._tallies: dict[int, TransferTally] = {}
        self._tallies_lock = threading.Lock()

    @property
    def port(self) -> int:
        """The bound TCP port (useful when the configured port is 0)."""
        if self._server is None:
            raise RuntimeError("the DIMSE listener is not running")
        return int(self._server.server_address[1])

    def start(self) -> None:
        """Start serving associations in background threads."""
        # Received data sets are written to a file instead of memory (bounded memory per
        # association); this is pynetdicom's process-wide switch.
        _config.STORE_RECV_CHUNKED_DATASET = True
        handlers: list[evt.EventHandlerType] = [
            (evt.EVT_C_STORE, self._on_c_store),
            (evt.EVT_C_ECHO, self._on_c_echo),
            (evt.EVT_CONN_OPEN, self._on_conn_open),
            (evt.EVT_CONN_CLOSE, self._on_conn_close),
            (evt.EVT_REJECTED, self._on_rejected),
        ]
        address = (self._settings.dicom.host, self._settings.dicom.port)
        context = tls_context(self._settings.dicom)
        self._server = self._ae.start_server(
            address, block=False, evt_handlers=handlers, ssl_context=context
        )
        log.info(
            "DIMSE listener %s on %s:%d%s",
            self._ae.ae_title,
            address[0],
            self.port,
            " (TLS)" if context else "",
        )

    def stop(self) -> None:
        """Stop accepting associations and close the listening socket."""
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    def _on_c_echo(self, _event: evt.Event) -> int:
        return int(StoreStatus.SUCCESS)

    def _on_conn_open(self, event: evt.Event) -> None:
        # Senders built on dcmtk answer in two writes; without TCP_NODELAY each exchange waits
        # for a delayed ACK (tens of ms per instance).
        sock = getattr(getattr(event.assoc.dul, "socket", None), "socket", None)
        if isinstance(sock, socket.socket) and sock.family in (socket.AF_INET, socket.AF_INET6):
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError as exc:
                log.debug("TCP_NODELAY not set: %s", exc)

    def _tally(self, event: evt.Event) -> TransferTally:
        requestor = event.assoc.requestor
        with self._tallies_lock:
            tally = self._tallies.get(id(event.assoc))
            if tally is None:
                tally = TransferTally(
                    str(requestor.ae_title or "").strip(), str(requestor.address or "")
                )
                self._tallies[id(event.assoc)] = tally
        return tally

    def _on_conn_close(self, event: evt.Event) -> None:
        # Released, aborted or dropped: whatever was answered is summarised once.
        with self._tallies_lock:
            tally = self._tallies.pop(id(event.assoc), None)
        if tally is None:
            return
        try:
            audit_transfer(self._recorder.engine, tally)
        except Exception:
            log.exception("could not audit the transfer from %s", tally.calling_ae)

    def _on_rejected(self, event: evt.Event) -> None:
        requestor = event.assoc.requestor
        calling_ae = str(requestor.ae_title or "").strip()
        allowed = self._settings.dicom.allowed_calling_aes
        reason = (
            "calling AE title is not allowed"
            if allowed and calling_ae not in allowed
            else "association rejected"
        )
        log.warning("association from %s (%s) refused: %s", calling_ae, requestor.address, reason)
        self._audit_refusal(calling_ae, str(requestor.address or ""), reason, {})

    def _on_c_store(self, event: evt.Event) -> Dataset:
        rsp = self._store(event)
        if rsp.Status not in (StoreStatus.SUCCESS, StoreStatus.WARNING_COERCION):
            self._tally(event).refused()
        return rsp

    def _store(self, event: evt.Event) -> Dataset:
        requestor = event.assoc.requestor
        calling_ae = str(requestor.ae_title or "").strip()
        peer = str(requestor.address or "")
        request = event.request
        try:
            with part10_file(Path(event.dataset_path), event.file_meta) as path:
                header = parse_header(path)
                if header.sop_class_uid != str(request.AffectedSOPClassUID):
                    return self._refused(
                        StoreStatus.DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
                        "SOPClassUID differs from Affected SOP Class UID",
                        calling_ae,
                        peer,
                        request,
                    )
                tally = self._tally(event)
                outcome = self._recorder.record(
                    path,
                    header,
                    calling_ae,
                    peer_address=peer,
                    transfer_id=tally.transfer_id,
                    adopt=True,  # pynetdicom's received file, deleted after this handler
                )
                tally.stored(outcome)
        except InvalidInput as exc:
            return self._refused(
                StoreStatus.CANNOT_UNDERSTAND, exc.message, calling_ae, peer, request
            )
        except OutOfResources as exc:
            return self._refused(
                StoreStatus.OUT_OF_RESOURCES, exc.message, calling_ae, peer, request
            )
        except Exception:
            # The DIMSE boundary: whatever failed, the sender gets a failure status it can retry
            # on, and the log line carries the correlation id quoted in the response.
            correlation = secrets.token_hex(8)
            log.exception("C-STORE from %s failed; correlation id %s", calling_ae, correlation)
            return _status(StoreStatus.PROCESSING_FAILURE, f"processing failure {correlation}")
        if outcome.is_warning:
            return _status(
                StoreStatus.WARNING_COERCION,
                f"instance received before with other content; version {outcome.version}",
            )
        return _status(StoreStatus.SUCCESS)

    def _refused(
        self, status: StoreStatus, reason: str, calling_ae: str, peer: str, request: Any
    ) -> Dataset:
        log.info("C-STORE from %s refused with 0x%04X: %s", calling_ae, status, reason)
        detail = {
            "status": f"0x{int(status):04X}",
            "sop-instance-uid": str(request.AffectedSOPInstanceUID or ""),
            "sop-class-uid": str(request.AffectedSOPClassUID or ""),
        }
        self._audit_refusal(calling_ae, peer, reason, detail)
        return _status(status, reason)

    def _audit_refusal(
        self, calling_ae: str, peer: str, reason: str, detail: dict[str, str]
    ) -> None:
        try:
            self._recorder.record_refusal(calling_ae, reason, peer_address=peer, detail=detail)
        except Exception:
            # The refusal itself has been answered; a failed audit write must not turn it into
            # an exception inside pynetdicom's thread, and the log keeps the record.
            log.exception("could not audit the refusal of %s: %s", calling_ae, reason)
