"""Instance stored: spool the received file durably, then record it in one transaction.

The sender hears success only after both the spooled bytes and the database commit are durable
(PS3.4 B.2.3: success means the SCP has taken responsibility for the instance). A study gets a new
quiet deadline with every instance; a late instance re-opens a study that was already scored.
"""

from __future__ import annotations

import contextlib
import enum
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

from pydicom.uid import generate_uid
from sqlalchemy import Connection, Engine

from gateway.audit.trail import record_event
from gateway.dicom_header import ParsedHeader, data_set_offset, parse_header
from gateway.domain.model import Actor, StoredInstance, StudyState
from gateway.group_commit import GroupCommitter
from gateway.instance_rows import (
    complete_on_count,
    earlier_versions,
    insert_attributes,
    insert_instance,
    instance_row,
    latest_version,
    stored_instance,
    study_now,
    upsert_study,
)
from gateway.pipeline import Event, PipelineEvent
from gateway.settings import Settings
from gateway.spool import Spool, SpoolCollisionError, SpooledFile

__all__ = [
    "Disposition",
    "IngestOutcome",
    "InstanceRecorder",
    "ParsedHeader",
    "data_set_offset",
    "parse_header",
    "sender_actor",
]

# A new version number is tried this many times when the file name is taken by another writer.
MAX_VERSION_ATTEMPTS = 20
_SAFE_ID = re.compile(r"[^A-Za-z0-9.-]+")


class Disposition(enum.StrEnum):
    """What became of a received instance."""

    STORED = "stored"
    DUPLICATE = "duplicate"  # same SOP Instance UID, identical bytes: nothing new recorded
    NEW_VERSION = "new-version"  # same SOP Instance UID, different bytes: kept as a new version


@dataclass(frozen=True, slots=True)
class IngestOutcome:
    """The result of recording one instance."""

    disposition: Disposition
    instance: StoredInstance
    version: int

    @property
    def is_warning(self) -> bool:
        """True when the sender should hear a warning rather than plain success."""
        return self.disposition is Disposition.NEW_VERSION


def sender_actor(calling_ae: str, peer_address: str = "") -> Actor:
    """The audit actor for a DICOM peer, named by its calling AE title."""
    ident = _SAFE_ID.sub("-", calling_ae.strip()).strip("-") or "unknown"
    return Actor(
        reference=f"Device/dicom-ae-{ident}"[:72],
        display=calling_ae.strip(),
        network_address=peer_address,
    )


def _utcnow() -> datetime:
    return datetime.now(UTC)


class _Rehearsed(Exception):
    """A rehearsal's transaction is rolled back, never committed."""


@dataclass(frozen=True, slots=True)
class _Superseded:
    """The version spooled is not above the latest recorded one; nothing was written."""

    latest: int


class InstanceRecorder:
    """Records received instances: durable spool first, then one database transaction."""

    def __init__(
        self,
        engine: Engine,
        spool: Spool,
        settings: Settings,
        *,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        self._engine = engine
        self._spool = spool
        self._settings = settings
        self._clock = clock
        self._committer = GroupCommitter(engine)

    @property
    def engine(self) -> Engine:
        """The database the recorder writes to."""
        return self._engine

    def record(
        self,
        path: Path,
        header: ParsedHeader,
        calling_ae: str,
        *,
        peer_address: str = "",
        transfer_id: str | None = None,
        adopt: bool = False,
        data_set_sha256: str | None = None,
        hand_over: bool = False,
    ) -> IngestOutcome:
        """Spool and record one received instance (the file at `path` is copied, or linked with
        `adopt` when the caller owns it and it lies on the spool's file system; a receiver that
        hashed the data set while writing it passes `data_set_sha256`).

        With a `transfer_id` the instance is audited by its association's or request's DICOM
        Instances Transferred summary (gateway.transfer_audit); without one, by its own record.

        With `hand_over` (an adopted file in a receiving run's directory, see
        gateway.spool_recovery) the outcome returns once the spooled file is durable and the
        statements ran, before the commit; the file at `path` then belongs to the recorder,
        which removes it once the row is committed. Should the process die first, that file
        tells the next start to record the instance from the spool. On an exception the
        caller still owns it.
        """
        hash_from = 0 if data_set_sha256 else data_set_offset(path)
        version = 1
        for _ in range(MAX_VERSION_ATTEMPTS):
            version, spooled = self._spool_next_version(
                path, header, version, hash_from, adopt or hand_over, data_set_sha256
            )
            # Only a linked file leaves the received name as the mark of a pending commit.
            pending = path if hand_over and not spooled.synced else None
            result = self._commit(
                spooled, version, header, calling_ae, peer_address, transfer_id, pending
            )
            if isinstance(result, _Superseded):
                # A version at or above this one is recorded already (its name was free in the
                # spool: an orphan reaped after a crash); the bytes are spooled again above it.
                self._spool.discard(spooled.path)
                version = result.latest + 1
                continue
            if hand_over and pending is None:
                path.unlink(missing_ok=True)  # copied, not linked: nothing to keep it for
            return result
        raise SpoolCollisionError(f"no free version for {header.sop_instance_uid}")

    def record_in_place(
        self, spooled: SpooledFile, version: int, header: ParsedHeader, calling_ae: str
    ) -> IngestOutcome | None:
        """Record a file already under its spool name; None when a later version is recorded."""
        result = self._commit(spooled, version, header, calling_ae, "")
        return None if isinstance(result, _Superseded) else result

    def settle(self) -> None:
        """Return once every instance recorded so far is committed."""
        self._committer.settle()

    def rehearse(
        self,
        header: ParsedHeader,
        spooled: SpooledFile,
        also: Callable[[Connection, IngestOutcome], None] | None = None,
    ) -> IngestOutcome:
        """Record `header` on the committing thread, then roll everything back (and `also`)."""
        rehearsed: list[IngestOutcome] = []

        def work(conn: Connection) -> None:
            # Once audited by its own record, once as part of a transfer: both paths' statements.
            self._commit_in(conn, spooled, 1, header, "REHEARSAL", "", None)
            transferred = replace(header, sop_instance_uid=generate_uid())
            outcome = self._commit_in(conn, spooled, 1, transferred, "REHEARSAL", "", "rehearsal")
            if not isinstance(outcome, IngestOutcome):  # a fresh UID cannot be recorded already
                raise RuntimeError("the rehearsal's instance is recorded already")
            if also is not None:
                also(conn, outcome)
            rehearsed.append(outcome)

        def never_ready() -> None:
            raise _Rehearsed

        with contextlib.suppress(_Rehearsed):
            self._committer.submit(work, never_ready)()
        return rehearsed[0]

    def record_refusal(
        self,
        calling_ae: str,
        reason: str,
        *,
        peer_address: str = "",
        detail: Mapping[str, str] | None = None,
    ) -> None:
        """Audit a refused association or a failed C-STORE (PS3.15 A.5.3.5 with a failure)."""
        with self._engine.begin() as conn:
            record_event(
                conn,
                PipelineEvent(
                    kind=Event.INSTANCE_REFUSED,
                    actor=sender_actor(calling_ae, peer_address),
                    occurred_at=self._clock(),
                    outcome="4",
                    outcome_desc=reason,
                    detail={"calling-ae": calling_ae.strip(), **(detail or {})},
                ),
            )

    def _spool_next_version(
        self,
        path: Path,
        header: ParsedHeader,
        version: int,
        hash_from: int,
        adopt: bool,
        sha256: str | None,
    ) -> tuple[int, SpooledFile]:
        # A first receipt is spooled as version 1 without asking the database; the transaction
        # checks the choice against the versions recorded (see _commit_in). A name already
        # taken means the instance was received before: go on above its latest recorded version.
        looked_up = False
        for _ in range(MAX_VERSION_ATTEMPTS):
            try:
                spooled = self._spool.store_file(
                    path,
                    header.study_instance_uid,
                    header.sop_instance_uid,
                    version,
                    hash_from=hash_from,
                    adopt=adopt,
                    sha256=sha256,
                    defer_sync=True,
                )
            except SpoolCollisionError:
                # Another writer, an earlier version or an orphan of a crash holds this name.
                if looked_up:
                    version += 1
                else:
                    looked_up = True
                    version = max(version, self._latest_version(header.sop_instance_uid)) + 1
                continue
            return version, spooled
        raise SpoolCollisionError(f"no free version for {header.sop_instance_uid}")

    def _latest_version(self, sop_uid: str) -> int:
        with self._engine.connect() as conn:
            return latest_version(conn, sop_uid)

    def _commit(
        self,
        spooled: SpooledFile,
        version: int,
        header: ParsedHeader,
        calling_ae: str,
        peer_address: str,
        transfer_id: str | None = None,
        pending: Path | None = None,
    ) -> IngestOutcome | _Superseded:
        # Concurrent associations share one transaction and one log flush (group commit). The
        # statements run while this thread makes the spooled file durable; the transaction
        # commits only once it is, so no committed row ever refers to bytes not on disk.
        durable = threading.Event()
        failed: list[BaseException] = []

        def work(conn: Connection) -> IngestOutcome | _Superseded:
            return self._commit_in(
                conn, spooled, version, header, calling_ae, peer_address, transfer_id
            )

        def ready() -> None:
            durable.wait()
            if failed:
                raise failed[0]

        def committed(result: IngestOutcome | _Superseded) -> None:
            if isinstance(result, _Superseded):
                return  # the caller spools the bytes again above the latest version
            # A duplicate of identical bytes recorded under another version: the copy is removed
            # only after the commit, so a failed commit never loses a referenced file. An owed
            # piece run again after a commit whose outcome was unknown finds its own row.
            if result.disposition is Disposition.DUPLICATE and result.instance.path != str(
                spooled.path
            ):
                self._spool.discard(spooled.path)
            if pending is not None:
                pending.unlink(missing_ok=True)

        def early(result: IngestOutcome | _Superseded) -> bool:
            return pending is not None and isinstance(result, IngestOutcome)

        outcome = self._committer.submit(work, ready, answer_early=early, after_commit=committed)
        try:
            self._spool.sync(spooled)
        except BaseException as exc:
            failed.append(exc)
            durable.set()
            with contextlib.suppress(BaseException):
                outcome()
            self._spool.discard(spooled.path)
            raise
        durable.set()
        return outcome()

    def _commit_in(
        self,
        conn: Connection,
        spooled: SpooledFile,
        version: int,
        header: ParsedHeader,
        calling_ae: str,
        peer_address: str,
        transfer_id: str | None,
    ) -> IngestOutcome | _Superseded:
        now = self._clock()
        earlier = earlier_versions(conn, header.sop_instance_uid)
        same = next((r for r in earlier if r["sha256"] == spooled.sha256), None)
        if same is not None:
            outcome = IngestOutcome(
                Disposition.DUPLICATE, stored_instance(same, header), same["version"]
            )
            previous_state = ""
        else:
            latest = max((r["version"] for r in earlier), default=0)
            if version <= latest:
                return _Superseded(latest)
            disposition = Disposition.NEW_VERSION if earlier else Disposition.STORED
            stored = StoredInstance(
                sop_instance_uid=header.sop_instance_uid,
                sop_class_uid=header.sop_class_uid,
                study_instance_uid=header.study_instance_uid,
                series_instance_uid=header.series_instance_uid,
                transfer_syntax_uid=header.transfer_syntax_uid,
                path=str(spooled.path),
                size=spooled.size,
                sha256=spooled.sha256,
                modality=header.modality,
                patient_id=header.patient_id,
                patient_name=header.patient_name,
                accession_number=header.accession_number,
                calling_ae=calling_ae.strip()[:16],
                received_at=now,
            )
            insert_instance(
                conn,
                {
                    **instance_row(stored, version),
                    "transfer_id": transfer_id,
                    "transfer_audited": transfer_id is None,
                },
            )
            if header.attributes:
                insert_attributes(
                    conn,
                    {
                        **header.attributes,
                        "sop_instance_uid": header.sop_instance_uid,
                        "version": version,
                        "study_instance_uid": header.study_instance_uid,
                        "series_instance_uid": header.series_instance_uid,
                        "sop_class_uid": header.sop_class_uid,
                    },
                )
            new_in_study = not any(
                r["study_instance_uid"] == header.study_instance_uid for r in earlier
            )
            previous_state = self._upsert_study(conn, header, now, new_in_study)
            outcome = IngestOutcome(disposition, stored, version)
        reopened = previous_state not in ("", StudyState.RECEIVING.value)
        # The association's summary counts plain receipts; a new version or a re-opened
        # study is a change worth its own record, as is any receipt outside a transfer.
        if transfer_id is None or outcome.is_warning or reopened:
            event = self._stored_event(
                outcome, header, now, sender_actor(calling_ae, peer_address), previous_state
            )
            record_event(conn, event)
        return outcome

    def _upsert_study(
        self, conn: Connection, header: ParsedHeader, now: datetime, new_in_study: bool
    ) -> str:
        existing = study_now(conn, header.study_instance_uid)
        quiet = self._settings.assembly.quiet_period(header.modality)
        if existing is not None and existing.modality:
            # A study of mixed modalities waits as long as its slowest modality asks for.
            quiet = max(quiet, self._settings.assembly.quiet_period(existing.modality))
        due = now + timedelta(seconds=quiet)
        receiving_now = existing is not None and existing.state == StudyState.RECEIVING.value
        if receiving_now and existing is not None and existing.complete_by is not None:
            # Never past the maximum wait of the study being received.
            due = min(due, existing.complete_by)
        upsert_study(
            conn,
            {
                "study_instance_uid": header.study_instance_uid,
                "patient_id": header.patient_id,
                "patient_name": header.patient_name,
                "accession_number": header.accession_number,
                "encounter_id": header.encounter_id,
                "modality": header.modality,
                "state": StudyState.RECEIVING.value,
                "instance_count": 1,
                "first_received_at": now,
                "last_received_at": now,
                "stable_due_at": due,
                "lease_owner": None,
                "lease_until": None,
                "score_generation": 0,
                "updated_at": now,
                "expected_instances": header.expected_instances,
                "complete_by": now + timedelta(seconds=self._settings.assembly.max_wait_seconds),
                "claim_attempts": 0,
                # On conflict the study counts the instance only if it is new to the study.
                "added": 1 if new_in_study else 0,
            },
        )
        if header.expected_instances is not None or (
            existing is not None and existing.expected_instances is not None
        ):
            # After the upsert, on the row this transaction has locked, so concurrent
            # associations of one study count exactly.
            complete_on_count(conn, header.study_instance_uid, now)
        return "" if existing is None else str(existing.state)

    @staticmethod
    def _stored_event(
        outcome: IngestOutcome,
        header: ParsedHeader,
        now: datetime,
        actor: Actor,
        previous_state: str,
    ) -> PipelineEvent:
        inst = outcome.instance
        detail = {
            "sop-instance-uid": inst.sop_instance_uid,
            "sop-class-uid": inst.sop_class_uid,
            "calling-ae": actor.display,
            "version": str(outcome.version),
            "sha256": inst.sha256,
            "disposition": outcome.disposition.value,
        }
        if previous_state and previous_state != StudyState.RECEIVING.value:
            detail["reopened-from"] = previous_state
        return PipelineEvent(
            kind=Event.INSTANCE_STORED,
            actor=actor,
            occurred_at=now,
            outcome="4" if outcome.is_warning else "0",
            outcome_desc=(
                "SOP Instance received again with different content; kept as a new version"
                if outcome.is_warning
                else ""
            ),
            study_instance_uid=header.study_instance_uid,
            patient_id=header.patient_id,
            encounter_id=header.encounter_id,
            detail=detail,
        )
