"""Transactional outbox for worklist write-back: enqueue in the caller's transaction, deliver later.

A row is written with the state change that caused it, so a priority change is never lost nor
sent for a change that rolled back. Dispatchers on any number of replicas claim due rows with
one `UPDATE … RETURNING` (exact on SQLite and PostgreSQL), deliver them through the configured
`WorklistUpdater`, and settle each with bounded exponential backoff, a dead-letter state and an
audit record per attempt. Delivery is at least once; the HL7 control id stays the same across
retries so the RIS can recognise a repeat.

Order: a row is only eligible while no earlier row for the same destination and study is still
pending, so a later priority change never overtakes an earlier one. Queueing and the operator
functions live in `gateway.outbox_store` and are re-exported here.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, Row, exists, or_, select, update
from sqlalchemy.exc import SQLAlchemyError

from gateway.audit.trail import record_event
from gateway.domain.errors import DeliveryFailed, DeliveryRefused
from gateway.metrics import Metrics
from gateway.outbox_store import (
    ALERT_DESTINATION,
    DEAD,
    DEAD_LETTER_ALERT_KIND,
    DELIVERED,
    GATEWAY_ACTOR,
    PENDING,
    OutboxRow,
    count_by_state,
    detail,
    enqueue,
    get_row,
    list_rows,
    patient_of,
    read_utc,
    replay,
    utc,
)
from gateway.persistence.tables import outbox
from gateway.pipeline import Event, PipelineEvent
from gateway.ports import WorklistMessage, WorklistUpdater
from gateway.settings import WorklistSettings

__all__ = [
    "ALERT_DESTINATION",
    "DEAD",
    "DEAD_LETTER_ALERT_KIND",
    "DELIVERED",
    "GATEWAY_ACTOR",
    "PENDING",
    "Attempt",
    "OutboxDispatcher",
    "OutboxRow",
    "backoff_delay",
    "count_by_state",
    "enqueue",
    "get_row",
    "list_rows",
    "replay",
]

log = logging.getLogger(__name__)

# A retry waits 80-100 % of its backoff, so replicas and peers do not retry in lock-step.
JITTER_FRACTION = 0.2
LEASE_MARGIN_SECONDS = 30.0
_SYSTEM_RANDOM = random.SystemRandom()


@dataclass(frozen=True, slots=True)
class Attempt:
    """The outcome of one delivery attempt, before it is settled."""

    row: Row[Any]
    ack_id: str = ""
    error: str | None = None
    refused: bool = False


def backoff_delay(attempts: int, settings: WorklistSettings, rand: Callable[[], float]) -> float:
    """Seconds to wait after `attempts` earlier failures: min(cap, base·2^n), jittered down."""
    base = min(settings.max_backoff_seconds, settings.backoff_seconds * 2.0 ** min(attempts, 62))
    return base * (1.0 - JITTER_FRACTION * rand())


class OutboxDispatcher:
    """Claims due outbox rows, delivers them, and records each outcome."""

    def __init__(
        self,
        engine: Engine,
        updaters: Mapping[str, WorklistUpdater],
        settings: WorklistSettings,
        worker_id: str,
        *,
        batch_size: int = 10,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        rand: Callable[[], float] = _SYSTEM_RANDOM.random,
        metrics: Metrics | None = None,
        alert_destination: str = "",
    ) -> None:
        self._engine = engine
        self._metrics = metrics or Metrics()
        self._alert_destination = alert_destination
        self._outcomes = self._metrics.counter(
            "hitl_worklist_attempts_total", "Worklist delivery attempts by destination and outcome."
        )
        self._dead_letters = self._metrics.counter(
            "hitl_worklist_dead_letters_total", "Worklist changes dead-lettered, by destination."
        )
        self._updaters = dict(updaters)
        self._settings = settings
        self._worker_id = worker_id
        self._batch_size = batch_size
        self._clock = clock
        self._rand = rand
        # A claim must outlive the slowest batch (connect + ACK timeouts per row), or another
        # replica would take the rows over while they are still being delivered.
        self._lease = timedelta(
            seconds=batch_size * 2 * settings.ack_timeout_seconds + LEASE_MARGIN_SECONDS
        )

    async def run_once(self, now: datetime | None = None) -> int:
        """Claim the rows due at `now`, deliver them, settle them; the number of rows handled.

        A claim holds at most one row per destination and study (the ordering rule), so the
        rows of one pass are independent and are sent concurrently, up to `max_in_flight` per
        destination; their outcomes are then settled in one transaction.
        """
        if not self._updaters:
            return 0
        at = utc(now or self._clock())
        claimed = await asyncio.to_thread(self._claim, at)
        if not claimed:
            return 0
        limits = {
            d: asyncio.Semaphore(max(1, self._settings.max_in_flight))
            for d in {r.destination for r in claimed}
        }

        async def attempt(row: Row[Any]) -> Attempt:
            async with limits[row.destination]:
                return await self._attempt(row)

        outcomes = await asyncio.gather(*(attempt(r) for r in claimed))
        await asyncio.to_thread(self._settle_all, outcomes, at)
        return len(claimed)

    async def run_forever(self, stop: asyncio.Event) -> None:
        """Run passes every `poll_seconds` until `stop` is set; a full batch is followed at once."""
        while not stop.is_set():
            handled = 0
            try:
                handled = await self.run_once()
            except SQLAlchemyError:
                # The database is unreachable or refused the settle; rows stay pending or leased
                # (until the lease runs out) and are picked up by a later pass.
                log.exception("outbox pass failed; retrying in %g s", self._settings.poll_seconds)
            if handled >= self._batch_size:
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self._settings.poll_seconds)

    def _claim(self, now: datetime) -> list[Row[Any]]:
        candidate = outbox.alias("candidate")
        earlier = outbox.alias("earlier")
        earlier_pending = (
            exists()
            .where(
                earlier.c.destination == candidate.c.destination,
                earlier.c.study_instance_uid == candidate.c.study_instance_uid,
                earlier.c.state == PENDING,
                earlier.c.id < candidate.c.id,
            )
            .correlate(candidate)
        )
        due = (
            select(candidate.c.id)
            .where(
                candidate.c.state == PENDING,
                candidate.c.next_attempt_at <= now,
                or_(candidate.c.lease_until.is_(None), candidate.c.lease_until < now),
                candidate.c.destination.in_(sorted(self._updaters)),
                ~earlier_pending,
            )
            .order_by(candidate.c.id)
            .limit(self._batch_size)
        )
        # The lease test is repeated on the updated row itself: PostgreSQL re-evaluates these
        # conditions on the newest row version after a concurrent claim commits, so two
        # dispatchers racing for the same row cannot both win it.
        stmt = (
            update(outbox)
            .where(
                outbox.c.id.in_(due),
                outbox.c.state == PENDING,
                or_(outbox.c.lease_until.is_(None), outbox.c.lease_until < now),
            )
            .values(lease_owner=self._worker_id, lease_until=now + self._lease)
            .returning(
                outbox.c.id,
                outbox.c.destination,
                outbox.c.idempotency_key,
                outbox.c.study_instance_uid,
                outbox.c.kind,
                outbox.c.payload,
                outbox.c.attempts,
                outbox.c.created_at,
            )
        )
        with self._engine.begin() as conn:
            rows = list(conn.execute(stmt))
        return sorted(rows, key=lambda r: int(r.id))

    async def _attempt(self, row: Row[Any]) -> Attempt:
        message = WorklistMessage(
            outbox_id=int(row.id),
            idempotency_key=row.idempotency_key,
            destination=row.destination,
            kind=row.kind,
            payload=row.payload,
        )
        try:
            ack_id = await self._updaters[row.destination].deliver(message)
        except DeliveryRefused as exc:
            return Attempt(row, error=exc.message, refused=True)
        except DeliveryFailed as exc:
            return Attempt(row, error=exc.message)
        except Exception as exc:
            # An updater broke its contract; the row still gets bounded retries and an audit
            # record instead of a stuck lease and a dead dispatcher.
            log.exception("worklist updater %r raised %s", row.destination, type(exc).__name__)
            return Attempt(row, error=repr(exc))
        return Attempt(row, ack_id=ack_id)

    def _settle_all(self, outcomes: list[Attempt], now: datetime) -> None:
        at = max(now, utc(self._clock()))
        counted: list[tuple[Attempt, bool]] = []
        with self._engine.begin() as conn:
            for outcome in outcomes:
                if outcome.error is None:
                    settled = self._settle_success(conn, outcome.row, at, outcome.ack_id)
                    counted.append((outcome, False))
                else:
                    dead = self._settle_failure(conn, outcome, at)
                    settled = dead is not None
                    counted.append((outcome, bool(dead)))
                if not settled:
                    counted.pop()
        for outcome, dead in counted:
            destination = outcome.row.destination
            kind = "delivered" if outcome.error is None else "failed"
            self._outcomes.inc(
                destination=destination, outcome="refused" if outcome.refused else kind
            )
            if dead:
                self._dead_letters.inc(destination=destination)
                log.error(
                    "worklist change %s to %s dead-lettered: %s",
                    outcome.row.id,
                    destination,
                    outcome.error,
                )

    def _settle_success(self, conn: Connection, row: Row[Any], at: datetime, ack_id: str) -> bool:
        if not self._settle(conn, row, state=DELIVERED, delivered_at=at, last_error=""):
            return False
        self._audit(
            conn, row, Event.WORKLIST_DELIVERED, at, "0", "", {"acknowledgement-id": ack_id}
        )
        return True

    def _settle_failure(self, conn: Connection, outcome: Attempt, at: datetime) -> bool | None:
        """Record a failed attempt; True when dead-lettered, False when retried, None if lost."""
        row, error, refused = outcome.row, outcome.error or "", outcome.refused
        attempts = int(row.attempts) + 1
        age = (at - read_utc(row.created_at)).total_seconds()
        too_old = 0 < self._settings.max_age_seconds <= age
        dead = refused or too_old or attempts >= self._settings.max_attempts
        next_at = at + timedelta(
            seconds=backoff_delay(int(row.attempts), self._settings, self._rand)
        )
        settled = self._settle(
            conn,
            row,
            state=DEAD if dead else PENDING,
            attempts=attempts,
            next_attempt_at=next_at,
            last_error=error,
        )
        if not settled:
            return None
        more = {"attempt": str(attempts), "error": error}
        self._audit(conn, row, Event.WORKLIST_ATTEMPTED, at, "4", error, more)
        if dead:
            why = "refused by the peer" if refused else f"{attempts} attempts failed"
            if too_old and not refused:
                why = f"undelivered after {age:.0f} s (max_age_seconds)"
            more["dead-letter-reason"] = why
            self._audit(conn, row, Event.WORKLIST_DEAD_LETTERED, at, "8", why, more)
            self._raise_alert(conn, row, at, why, error)
        return dead

    def _raise_alert(
        self, conn: Connection, row: Row[Any], at: datetime, why: str, error: str
    ) -> None:
        """Queue the dead-letter alert in the same transaction (never for an alert itself)."""
        if not self._alert_destination or row.kind == DEAD_LETTER_ALERT_KIND:
            return
        document = {
            "type": "worklist.dead-letter",
            "outbox_id": int(row.id),
            "destination": row.destination,
            "idempotency_key": row.idempotency_key,
            "study_instance_uid": row.study_instance_uid,
            "reason": why,
            "last_error": error,
            "at": at.isoformat(),
        }
        enqueue(
            conn,
            destination=self._alert_destination,
            idempotency_key=f"dead-letter:{row.id}:{at.isoformat()}",
            study_uid=row.study_instance_uid,
            kind=DEAD_LETTER_ALERT_KIND,
            payload=json.dumps(document, sort_keys=True),
            actor=GATEWAY_ACTOR,
            patient_id=patient_of(conn, row.study_instance_uid),
            now=at,
        )

    def _settle(self, conn: Connection, row: Row[Any], **values: Any) -> bool:
        result = conn.execute(
            update(outbox)
            .where(
                outbox.c.id == row.id,
                outbox.c.lease_owner == self._worker_id,
                outbox.c.state == PENDING,
            )
            .values(lease_owner=None, lease_until=None, **values)
        )
        if result.rowcount != 1:
            # The lease ran out and another dispatcher took the row over; its outcome counts.
            log.warning("outbox row %s was taken over before it could be settled", row.id)
            return False
        return True

    def _audit(
        self,
        conn: Connection,
        row: Row[Any],
        kind: Event,
        at: datetime,
        outcome: str,
        outcome_desc: str,
        more: Mapping[str, str],
    ) -> None:
        record_event(
            conn,
            PipelineEvent(
                kind=kind,
                actor=GATEWAY_ACTOR,
                occurred_at=at,
                outcome=outcome,
                outcome_desc=outcome_desc,
                study_instance_uid=row.study_instance_uid,
                patient_id=patient_of(conn, row.study_instance_uid),
                detail=detail(int(row.id), row.destination, row.idempotency_key, **more),
            ),
        )
