"""STOW-RS Store Instances (PS3.18 10.5): a streamed multipart/related body into the spool.

Each part is copied to a file beside the spool in chunks as it arrives, so memory stays bounded
whatever the request or instance size; the file is then recorded exactly as a C-STORE would be
(same parser, same recorder, same duplicate and version rules). The response is the Store
Instances Response Module in application/dicom+json with the HTTP status of PS3.18 10.5.3.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import secrets
import time
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from aiohttp import web
from aiohttp.helpers import parse_mimetype

from gateway.dicom_header import DataSetDigest
from gateway.dicom_services import STORAGE_SOP_CLASSES, TRANSFER_SYNTAXES
from gateway.domain.errors import InvalidInput, OutOfResources
from gateway.ingest import IngestOutcome, InstanceRecorder, ParsedHeader, parse_header
from gateway.listeners.multipart_stream import (
    MultipartError,
    MultipartSplitter,
    PartData,
    PartStart,
)
from gateway.listeners.part_files import EarlyWriteback, write_fully
from gateway.transfer_audit import TransferTally, audit_transfer

log = logging.getLogger(__name__)

# Parts recorded concurrently within one request.
PARTS_IN_FLIGHT = 8
# Threads recording STOW-RS parts, all requests together. They are the gateway's own, not the
# event loop's default executor, which token validation, readiness and the FHIR handlers share:
# a burst of uploads queues here and never delays a reviewer's request or a health check.
RECORDING_THREADS = 2 * PARTS_IN_FLIGHT
# A part's bytes are gathered up to this size, then written and hashed on those threads: a slow
# disk holds up its own upload (TCP pushes back on the sender), never the event loop.
WRITE_BYTES = 1024 * 1024
STOW_SENDER = "STOW-RS"
# Pauses in seconds before each new attempt at a transfer summary whose write failed: a database
# blip is ridden out. The gateway's sweep at start-up skips its own live transfers, so without
# these a failed summary would wait for the next start.
SUMMARY_RETRY_PAUSES = (0.5, 2.0)


class FailureReason:
    """FailureReason (0008,1197) values used (PS3.18 Annex I, PS3.4 Table B.2-1)."""

    PROCESSING_FAILURE = 0x0110
    SOP_CLASS_NOT_SUPPORTED = 0x0122
    OUT_OF_RESOURCES = 0xA700
    # A data set that does not belong where it was sent: another study than the target URL.
    DOES_NOT_MATCH = 0xA900
    CANNOT_UNDERSTAND = 0xC000
    TRANSFER_SYNTAX_NOT_SUPPORTED = 0xC122


WARNING_COERCION = 0xB000


@dataclass(frozen=True, slots=True)
class PartResult:
    """What became of one part of the request."""

    sop_class_uid: str
    sop_instance_uid: str
    failure: int | None = None
    warning: int | None = None
    retrieve_url: str = ""


class TooLarge(Exception):
    """The request or one instance exceeds the configured limit (413)."""


@dataclass(slots=True)
class _IncomingPart:
    """A part being written to its file beside the spool (opened by its first write)."""

    path: Path
    out: BinaryIO | None = None
    size: int = 0
    digest: DataSetDigest = field(default_factory=DataSetDigest)
    pending: bytearray = field(default_factory=bytearray)  # received, not yet written
    writing: asyncio.Future[None] | None = None  # the slice being written, if any
    writeback: EarlyWriteback | None = None
    # A write that failed (a full disk): the rest of the part is read and dropped, and the
    # part alone fails; the request goes on.
    error: OSError | None = None

    @classmethod
    def named(cls, incoming: Path) -> _IncomingPart:
        """A part with a fresh file name; the file itself is created on a recording thread."""
        return cls(incoming / f".stow-{secrets.token_hex(8)}.part")

    def write(self, data: bytes | bytearray) -> None:
        """Append to the file and the digest (on a recording thread, not the event loop)."""
        if self.out is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.out = open(self.path, "xb", buffering=0)  # noqa: SIM115 (closed by finish)
            self.writeback = EarlyWriteback(self.out)
        write_fully(self.out, data)
        assert self.writeback is not None
        self.writeback.wrote(len(data))
        self.digest.update(data)

    def finish(self, data: bytes | bytearray) -> Path:
        """Write the last bytes and close the file."""
        self.write(data)
        self.close()
        return self.path

    def close(self) -> None:
        if self.out is not None:
            self.out.close()

    def discard(self) -> None:
        self.close()
        self.path.unlink(missing_ok=True)


class StowRequest:
    """One Store Instances transaction: parts in, Store Instances Response out."""

    def __init__(
        self,
        recorder: InstanceRecorder,
        incoming: Path,
        base_url: str,
        study_uid: str,
        tally: TransferTally,
        *,
        max_instance_bytes: int,
        max_request_bytes: int,
        executor: Executor | None = None,
    ) -> None:
        self._recorder = recorder
        self._executor = executor
        self._incoming = incoming
        self._base = base_url.rstrip("/")
        self._study_uid = study_uid
        self._tally = tally
        self._max_instance = max_instance_bytes
        self._max_request = max_request_bytes
        self._received = 0
        self.results: list[PartResult] = []

    async def consume(self, request: web.Request) -> None:
        """Read every part; raises TooLarge or ValueError (malformed multipart).

        Each part is recorded in a worker thread while the next one is read, up to
        PARTS_IN_FLIGHT at once, so the disk and database waits of one instance overlap the
        receipt of the next; the results keep the order of the parts.
        """
        slots = asyncio.Semaphore(PARTS_IN_FLIGHT)
        ordered: list[PartResult | asyncio.Task[PartResult]] = []
        boundary = parse_mimetype(request.headers.get("Content-Type", "")).parameters.get(
            "boundary", ""
        )
        splitter = MultipartSplitter(boundary.strip('"'))
        part: _IncomingPart | None = None
        skipping = False
        try:
            async for data in request.content.iter_any():
                for event in splitter.feed(data):
                    if isinstance(event, PartData):
                        if part is not None:
                            self._count(len(event.data), part)
                            if part.error is None:
                                part.pending += event.data
                            if len(part.pending) >= WRITE_BYTES:
                                await self._write(part)
                    elif isinstance(event, PartStart):
                        media = parse_mimetype(
                            event.headers.get("content-type", "application/dicom")
                        )
                        if media.type == "multipart":
                            raise ValueError("nested multipart bodies are not accepted")
                        skipping = (media.type, media.subtype) != ("application", "dicom")
                        if skipping:
                            ordered.append(PartResult("", "", FailureReason.CANNOT_UNDERSTAND))
                        else:
                            part = _IncomingPart.named(self._incoming)
                    elif part is not None:  # PartEnd of an application/dicom part
                        # The last bytes are written, hashed and recorded in one hand-off to a
                        # recording thread (a CT slice: its only one), while the next part is read.
                        ended, last = part, part.pending
                        part = None
                        await slots.acquire()
                        task = asyncio.create_task(self._record(ended, last, request.remote, slots))
                        ordered.append(task)
                if splitter.done:
                    break
            splitter.close()
        except MultipartError as exc:
            raise ValueError(str(exc)) from exc
        finally:
            if part is not None:
                await self._abandon(part)
            # Whatever ended the request, every part already received is recorded and reported.
            for item in ordered:
                self.results.append(await item if isinstance(item, asyncio.Task) else item)

    async def _write(self, part: _IncomingPart) -> None:
        # A slice is written while the next one is read; the slice before is waited for
        # first, so the slices reach the file in order and at most two are held.
        await self._written(part)
        if part.error is not None:
            part.pending.clear()
            return
        data, part.pending = part.pending, bytearray()
        loop = asyncio.get_running_loop()
        part.writing = loop.run_in_executor(self._executor, part.write, data)

    @staticmethod
    async def _written(part: _IncomingPart) -> None:
        """Wait for the part's slice being written, if any."""
        writing = part.writing
        if writing is None:
            return
        try:
            # Shielded, and forgotten only once done: cancelling the request stops this wait,
            # never the thread's write, and whoever drops the part still sees it in flight.
            await asyncio.shield(writing)
        except OSError as exc:
            part.error = exc
        part.writing = None

    @classmethod
    async def _written_or_dropped(cls, part: _IncomingPart) -> None:
        """Wait for the part's slice being written; if this wait is cancelled, the part's file
        is removed once the write is over."""
        try:
            await cls._written(part)
        except asyncio.CancelledError:
            _discard_when_written(part)
            raise

    async def _abandon(self, part: _IncomingPart) -> None:
        """Remove the file of a part the request ended in, once no thread writes to it."""
        with contextlib.suppress(Exception):
            await self._written_or_dropped(part)
        part.discard()

    def _count(self, nbytes: int, part: _IncomingPart) -> None:
        part.size += nbytes
        self._received += nbytes
        if part.size > self._max_instance or self._received > self._max_request:
            raise TooLarge("the instance or the request exceeds the size limit")

    async def _record(
        self,
        part: _IncomingPart,
        last: bytes | bytearray,
        peer: str | None,
        slots: asyncio.Semaphore,
    ) -> PartResult:
        try:
            await self._written_or_dropped(part)
            # From here the recording thread owns the part: it removes the file itself.
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(
                self._executor, self._finish_and_store, part, last, peer
            )
        finally:
            slots.release()

    def _finish_and_store(
        self, part: _IncomingPart, last: bytes | bytearray, peer: str | None
    ) -> PartResult:
        try:
            if part.error is not None:
                raise part.error
            path = part.finish(last)
        except OSError as exc:
            part.discard()
            full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
            reason = FailureReason.OUT_OF_RESOURCES if full else FailureReason.PROCESSING_FAILURE
            log.warning("STOW-RS: writing a part failed: %s", exc)
            return self._refused("", "", reason, f"writing the part failed: {exc.strerror}", peer)
        try:
            return self._store(path, part.digest, peer)
        finally:
            path.unlink(missing_ok=True)

    def _store(self, path: Path, digest: DataSetDigest, peer: str | None) -> PartResult:
        # The file meta came from the client: the data set is read from its offset only when
        # the meta walked regular up to it; without a syntax pydicom reads the whole file.
        syntax = digest.transfer_syntax or ""
        try:
            header = parse_header(path, data_set_at=digest.data_set_at, transfer_syntax=syntax)
        except InvalidInput as exc:
            return self._refused("", "", FailureReason.CANNOT_UNDERSTAND, exc.message, peer)
        cls, sop = header.sop_class_uid, header.sop_instance_uid
        if cls not in STORAGE_SOP_CLASSES:
            return self._refused(cls, sop, FailureReason.SOP_CLASS_NOT_SUPPORTED, "", peer)
        if header.transfer_syntax_uid not in TRANSFER_SYNTAXES:
            reason = FailureReason.TRANSFER_SYNTAX_NOT_SUPPORTED
            return self._refused(cls, sop, reason, header.transfer_syntax_uid, peer)
        if self._study_uid and header.study_instance_uid != self._study_uid:
            reason = FailureReason.DOES_NOT_MATCH
            return self._refused(cls, sop, reason, "instance of another study", peer)
        try:
            outcome = self._recorder.record(
                path,
                header,
                STOW_SENDER,
                peer_address=peer or "",
                transfer_id=self._tally.transfer_id,
                adopt=True,  # this request's own part file, deleted after recording
                # Hashed as it arrived only when the meta walked regular; otherwise the
                # recorder hashes the file itself (whole, see data_set_offset).
                data_set_sha256=digest.hexdigest() if syntax else None,
            )
        except OutOfResources as exc:
            return self._refused(cls, sop, FailureReason.OUT_OF_RESOURCES, exc.message, peer)
        except Exception:
            log.exception("STOW-RS: storing %s failed", sop)
            return self._refused(cls, sop, FailureReason.PROCESSING_FAILURE, "", peer)
        self._tally.stored(outcome)
        return self._stored(header, outcome)

    def _stored(self, header: ParsedHeader, outcome: IngestOutcome) -> PartResult:
        url = (
            f"{self._base}/dicomweb/studies/{header.study_instance_uid}"
            f"/series/{header.series_instance_uid}/instances/{header.sop_instance_uid}"
        )
        return PartResult(
            header.sop_class_uid,
            header.sop_instance_uid,
            warning=WARNING_COERCION if outcome.is_warning else None,
            retrieve_url=url,
        )

    def _refused(self, cls: str, sop: str, reason: int, text: str, peer: str | None) -> PartResult:
        self._tally.refused()
        detail = {"status": f"0x{reason:04X}", "sop-instance-uid": sop, "sop-class-uid": cls}
        with contextlib.suppress(Exception):  # the failure is answered either way; logged below
            self._recorder.record_refusal(
                STOW_SENDER, text or f"STOW-RS failure 0x{reason:04X}", peer_address=peer or "",
                detail=detail,
            )  # fmt: skip
        return PartResult(cls, sop, failure=reason)

    def response(self) -> tuple[int, dict[str, Any]]:
        """HTTP status and Store Instances Response (PS3.18 10.5.3)."""
        stored = [r for r in self.results if r.failure is None]
        failed = [r for r in self.results if r.failure is not None]
        body: dict[str, Any] = {}
        studies = {r.retrieve_url.split("/series/")[0] for r in stored}
        if len(studies) == 1:
            body["00081190"] = {"vr": "UR", "Value": [studies.pop()]}
        if failed:
            body["00081198"] = {"vr": "SQ", "Value": [_failed_item(r) for r in failed]}
        if stored:
            body["00081199"] = {"vr": "SQ", "Value": [_referenced_item(r) for r in stored]}
        if not self.results:
            return 400, body
        if not stored:
            return 409, body
        warned = any(r.warning is not None for r in stored)
        return (202 if failed or warned else 200), body

    def audit(self) -> None:
        """Write the DICOM Instances Transferred summary of this request; never raises.

        Runs after the response. After the last failed attempt the instance rows stay marked
        unsummarised and `audit_interrupted_transfers` writes the summary at the next start.
        """
        for pause in (*SUMMARY_RETRY_PAUSES, None):
            try:
                audit_transfer(self._recorder.engine, self._tally)
                return
            except Exception:
                if pause is None:
                    log.exception(
                        "STOW-RS: the summary of transfer %s was not written; the next start"
                        " writes it",
                        self._tally.transfer_id,
                    )
                    return
                log.warning(
                    "STOW-RS: writing a transfer summary failed; again in %s s",
                    pause,
                    exc_info=True,
                )
                time.sleep(pause)


def _discard_when_written(part: _IncomingPart) -> None:
    # Closing the file under a thread still writing to it could send that write to whatever
    # file reuses the descriptor's number: the file goes once the write is over.
    writing = part.writing
    if writing is None:
        part.discard()
        return

    def discard(done: asyncio.Future[None]) -> None:
        if not done.cancelled():
            done.exception()  # retrieved: the part is dropped whatever the write did
        part.discard()

    writing.add_done_callback(discard)


def _uid(value: str) -> dict[str, Any]:
    return {"vr": "UI", "Value": [value]} if value else {"vr": "UI"}


def _failed_item(result: PartResult) -> dict[str, Any]:
    return {
        "00081150": _uid(result.sop_class_uid),
        "00081155": _uid(result.sop_instance_uid),
        "00081197": {"vr": "US", "Value": [result.failure]},
    }


def _referenced_item(result: PartResult) -> dict[str, Any]:
    item: dict[str, Any] = {
        "00081150": _uid(result.sop_class_uid),
        "00081155": _uid(result.sop_instance_uid),
        "00081190": {"vr": "UR", "Value": [result.retrieve_url]},
    }
    if result.warning is not None:
        item["00081196"] = {"vr": "US", "Value": [result.warning]}
    return item
