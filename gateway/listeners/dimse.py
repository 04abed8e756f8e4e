"""DIMSE edge: Storage SCP and Verification SCP (PS3.4 Annex B and A).

The upper layer (gateway.listeners.dicom_server and dicom_association) serves each association on
its own thread and streams every data set to a Part 10 file, so memory stays bounded whatever the
instance size; instances are stored unchanged in the transfer syntax they were sent in. This
module is the handler: it hands the received file to the core (`parse_header`,
`InstanceRecorder.record`) and translates the core's errors into DIMSE statuses once, here.
"""

from __future__ import annotations

import logging
import secrets
import ssl

from gateway.dicom_services import (
    IMPLEMENTATION_CLASS_UID,
    IMPLEMENTATION_VERSION_NAME,
    STORAGE_SOP_CLASSES,
    TRANSFER_SYNTAXES,
    VERIFICATION_SOP_CLASS,
    VERIFICATION_TRANSFER_SYNTAXES,
    StoreStatus,
)
from gateway.domain.errors import InvalidInput, OutOfResources
from gateway.ingest import InstanceRecorder, parse_header
from gateway.listeners.dicom_association import AcceptancePolicy, Peer, StoreRequest
from gateway.listeners.dicom_server import DicomServer
from gateway.settings import DicomSettings, Settings
from gateway.spool_recovery import receiving_directory
from gateway.transfer_audit import TransferTally, audit_transfer, receiving_run

log = logging.getLogger(__name__)

__all__ = ["DimseListener", "StoreStatus", "tls_context"]


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


class DimseListener:
    """The gateway's DICOM application entity: C-STORE and C-ECHO SCP."""

    def __init__(self, settings: Settings, recorder: InstanceRecorder) -> None:
        self._settings = settings
        self._recorder = recorder
        self._server: DicomServer | None = None
        dicom = settings.dicom
        supported: dict[str, frozenset[str]] = {
            VERIFICATION_SOP_CLASS: VERIFICATION_TRANSFER_SYNTAXES
        }
        for sop_class in STORAGE_SOP_CLASSES:
            # Every listed transfer syntax is accepted as proposed: instances are stored unchanged.
            supported[sop_class] = frozenset(TRANSFER_SYNTAXES)
        self._policy = AcceptancePolicy(
            ae_title=dicom.ae_title,
            supported=supported,
            allowed_calling_aes=frozenset(dicom.allowed_calling_aes),
            check_called_ae=dicom.check_called_ae_title,
            max_pdu=dicom.max_pdu,
            # Also bounds a connection that never requests an association (a port probe, a
            # load balancer's check): it keeps a slot until then.
            artim_seconds=dicom.acse_timeout_seconds,
            idle_seconds=dicom.idle_timeout_seconds,
            implementation_class_uid=IMPLEMENTATION_CLASS_UID,
            implementation_version=IMPLEMENTATION_VERSION_NAME,
        )

    @property
    def port(self) -> int:
        """The bound TCP port (useful when the configured port is 0)."""
        if self._server is None:
            raise RuntimeError("the DIMSE listener is not running")
        return self._server.server_address[1]

    def start(self) -> None:
        """Start serving associations in background threads."""
        dicom = self._settings.dicom
        context = tls_context(dicom)
        self._server = DicomServer(
            (dicom.host, dicom.port),
            self._policy,
            self,
            receiving_directory(self._settings.storage.spool_dir, receiving_run()),
            maximum_associations=dicom.maximum_associations,
            ssl_context=context,
        )
        self._server.start()
        log.info(
            "DIMSE listener %s on %s:%d%s",
            dicom.ae_title,
            dicom.host,
            self.port,
            " (TLS)" if context else "",
        )

    def stop(self) -> None:
        """Stop accepting associations and close the listening socket."""
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    @staticmethod
    def _tally(peer: Peer) -> TransferTally:
        tally = peer.state.get("tally")
        if not isinstance(tally, TransferTally):
            tally = TransferTally(peer.calling_ae, peer.address)
            peer.state["tally"] = tally
        return tally

    def closed(self, peer: Peer) -> None:
        """Released, aborted or dropped: whatever was answered is summarised once."""
        tally = peer.state.pop("tally", None)
        if not isinstance(tally, TransferTally):
            return
        try:
            # The last instances were answered before their commit: the summary counts rows.
            self._recorder.settle()
            audit_transfer(self._recorder.engine, tally)
        except Exception:
            log.exception("could not audit the transfer from %s", tally.calling_ae)

    def rejected(self, peer: Peer, reason: str) -> None:
        """Audit a rejected association request."""
        log.warning("association from %s (%s) refused: %s", peer.calling_ae, peer.address, reason)
        self._audit_refusal(peer.calling_ae, peer.address, reason, {})

    def store(self, peer: Peer, request: StoreRequest) -> tuple[int, str]:
        """Record one received instance; the status and error comment for the sender."""
        status, comment = self._store(peer, request)
        if status not in (StoreStatus.SUCCESS, StoreStatus.WARNING_COERCION):
            self._tally(peer).refused()
        return int(status), comment

    def _store(self, peer: Peer, request: StoreRequest) -> tuple[StoreStatus, str]:
        calling_ae, address = peer.calling_ae, peer.address
        if request.abstract_syntax and request.abstract_syntax != request.sop_class_uid:
            return self._refused(
                StoreStatus.SOP_CLASS_NOT_SUPPORTED,
                "Affected SOP Class UID differs from the presentation context",
                calling_ae,
                address,
                request,
            )
        try:
            header = parse_header(
                request.data_set,
                data_set_at=request.data_set_at,
                transfer_syntax=request.transfer_syntax,
            )
            if header.sop_class_uid != request.sop_class_uid:
                return self._refused(
                    StoreStatus.DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
                    "SOPClassUID differs from Affected SOP Class UID",
                    calling_ae,
                    address,
                    request,
                )
            tally = self._tally(peer)
            outcome = self._recorder.record(
                request.data_set,
                header,
                calling_ae,
                peer_address=address,
                transfer_id=tally.transfer_id,
                # The association's received file: the recorder keeps it as the mark of a
                # commit still owed (gateway.spool_recovery) and removes it once committed.
                hand_over=True,
                data_set_sha256=request.data_set_sha256 or None,
            )
            request.kept = True
            tally.stored(outcome)
        except InvalidInput as exc:
            return self._refused(
                StoreStatus.CANNOT_UNDERSTAND, exc.message, calling_ae, address, request
            )
        except OutOfResources as exc:
            return self._refused(
                StoreStatus.OUT_OF_RESOURCES, exc.message, calling_ae, address, request
            )
        except Exception:
            # The DIMSE boundary: whatever failed, the sender gets a failure status it can retry
            # on, and the log line carries the correlation id quoted in the response.
            correlation = secrets.token_hex(8)
            log.exception("C-STORE from %s failed; correlation id %s", calling_ae, correlation)
            return StoreStatus.PROCESSING_FAILURE, f"processing failure {correlation}"
        if outcome.is_warning:
            return (
                StoreStatus.WARNING_COERCION,
                f"instance received before with other content; version {outcome.version}",
            )
        return StoreStatus.SUCCESS, ""

    def _refused(
        self, status: StoreStatus, reason: str, calling_ae: str, peer: str, request: StoreRequest
    ) -> tuple[StoreStatus, str]:
        log.info("C-STORE from %s refused with 0x%04X: %s", calling_ae, status, reason)
        detail = {
            "status": f"0x{int(status):04X}",
            "sop-instance-uid": request.sop_instance_uid,
            "sop-class-uid": request.sop_class_uid,
        }
        self._audit_refusal(calling_ae, peer, reason, detail)
        return status, reason

    def _audit_refusal(
        self, calling_ae: str, peer: str, reason: str, detail: dict[str, str]
    ) -> None:
        try:
            self._recorder.record_refusal(calling_ae, reason, peer_address=peer, detail=detail)
        except Exception:
            # The refusal itself has been answered; a failed audit write must not turn it into
            # an exception inside pynetdicom's thread, and the log keeps the record.
            log.exception("could not audit the refusal of %s: %s", calling_ae, reason)
