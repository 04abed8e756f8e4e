"""The outbox table: queueing in the caller's transaction, and what operators do with rows.

`enqueue` writes a row in the transaction of the state change that causes it, so a worklist
change is never lost nor sent for a change that rolled back. `list_rows`, `get_row` and
`replay` serve the `hitl-gateway outbox` commands; `count_by_state` feeds the outbox gauge.
The dispatcher that delivers rows is `gateway.outbox`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine, Row, func, select, update
from sqlalchemy.dialects import postgresql, sqlite

from gateway.audit.trail import record_event
from gateway.domain.errors import IllegalTransition, NotFound
from gateway.domain.model import Actor
from gateway.persistence.tables import outbox, studies
from gateway.pipeline import Event, PipelineEvent

PENDING = "pending"
DELIVERED = "delivered"
DEAD = "dead"
GATEWAY_ACTOR = Actor(reference="Device/hitl-gateway", display="hitl-gateway")
DEAD_LETTER_ALERT_KIND = "dead-letter-alert"
ALERT_DESTINATION = "dead-letter-alerts"


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """One outbox row as operators see it."""

    id: int
    destination: str
    idempotency_key: str
    study_instance_uid: str
    kind: str
    payload: str
    state: str
    attempts: int
    next_attempt_at: datetime
    last_error: str
    created_at: datetime
    delivered_at: datetime | None


def utc(value: datetime) -> datetime:
    """The time in UTC; naive times are refused."""
    if value.tzinfo is None:
        raise ValueError("outbox times must be timezone-aware")
    return value.astimezone(UTC)


def read_utc(value: datetime) -> datetime:
    """A stored time as aware UTC."""
    # SQLite keeps the UTC wall time without an offset.
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def enqueue(
    conn: Connection,
    *,
    destination: str,
    idempotency_key: str,
    study_uid: str,
    kind: str,
    payload: str,
    actor: Actor,
    patient_id: str,
    now: datetime | None = None,
    encounter_id: str = "",
    request_id: str = "",
) -> int | None:
    """Queue a message in the caller's transaction; the new row id, or None for a known key."""
    at = utc(now or datetime.now(UTC))
    values = {
        "destination": destination,
        "idempotency_key": idempotency_key,
        "study_instance_uid": study_uid,
        "kind": kind,
        "payload": payload,
        "state": PENDING,
        "attempts": 0,
        "next_attempt_at": at,
        "last_error": "",
        "created_at": at,
    }
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    stmt = (
        dialect.insert(outbox)
        .values(values)
        .on_conflict_do_nothing(index_elements=["destination", "idempotency_key"])
        .returning(outbox.c.id)
    )
    new_id = conn.execute(stmt).scalar_one_or_none()
    if new_id is None:
        return None
    record_event(
        conn,
        PipelineEvent(
            kind=Event.WORKLIST_QUEUED,
            actor=actor,
            occurred_at=at,
            study_instance_uid=study_uid,
            patient_id=patient_id,
            encounter_id=encounter_id,
            request_id=request_id,
            detail=detail(int(new_id), destination, idempotency_key, kind=kind),
        ),
    )
    return int(new_id)


def patient_of(conn: Connection, study_uid: str) -> str:
    """The patient of a study, from the study row ('' when unknown)."""
    # The outbox row does not repeat the patient; the study row is where the gateway keeps it.
    query = select(studies.c.patient_id).where(studies.c.study_instance_uid == study_uid)
    return str(conn.execute(query).scalar_one_or_none() or "")


def detail(outbox_id: int, destination: str, key: str, **more: str) -> dict[str, str]:
    """The audit detail naming an outbox row."""
    return {
        "outbox-id": str(outbox_id),
        "destination": destination,
        "idempotency-key": key,
        **more,
    }


def replay(
    engine: Engine,
    outbox_id: int,
    *,
    actor: Actor = GATEWAY_ACTOR,
    now: datetime | None = None,
    force: bool = False,
) -> None:
    """Put a dead row back to pending; refused if a newer change for that study was queued."""
    at = utc(now or datetime.now(UTC))
    with engine.begin() as conn:
        row = conn.execute(select(outbox).where(outbox.c.id == outbox_id)).one_or_none()
        if row is None:
            raise NotFound(f"outbox row {outbox_id} does not exist")
        if row.state != DEAD:
            raise IllegalTransition(f"outbox row {outbox_id} is {row.state}, not {DEAD}")
        newer = conn.execute(
            select(outbox.c.id).where(
                outbox.c.destination == row.destination,
                outbox.c.study_instance_uid == row.study_instance_uid,
                outbox.c.id > row.id,
                outbox.c.state != DEAD,
            )
        ).first()
        if newer is not None and not force:
            raise IllegalTransition(
                f"outbox row {newer.id} is a newer change for the same study; replaying "
                f"{outbox_id} would overwrite it (use force to replay anyway)"
            )
        conn.execute(
            update(outbox)
            .where(outbox.c.id == outbox_id, outbox.c.state == DEAD)
            .values(
                state=PENDING, attempts=0, next_attempt_at=at, lease_owner=None, lease_until=None
            )
        )
        record_event(
            conn,
            PipelineEvent(
                kind=Event.WORKLIST_QUEUED,
                actor=actor,
                occurred_at=at,
                study_instance_uid=row.study_instance_uid,
                patient_id=patient_of(conn, row.study_instance_uid),
                detail=detail(
                    outbox_id,
                    row.destination,
                    row.idempotency_key,
                    replay="true",
                    **{"previous-error": row.last_error},
                ),
            ),
        )


def _as_row(r: Row[Any]) -> OutboxRow:
    return OutboxRow(
        id=int(r.id),
        destination=r.destination,
        idempotency_key=r.idempotency_key,
        study_instance_uid=r.study_instance_uid,
        kind=r.kind,
        payload=r.payload,
        state=r.state,
        attempts=int(r.attempts),
        next_attempt_at=read_utc(r.next_attempt_at),
        last_error=r.last_error,
        created_at=read_utc(r.created_at),
        delivered_at=None if r.delivered_at is None else read_utc(r.delivered_at),
    )


def list_rows(
    engine: Engine, state: str | None = None, *, limit: int | None = None
) -> list[OutboxRow]:
    """Outbox rows in queue order, optionally only those in one state."""
    query = select(outbox).order_by(outbox.c.id).limit(limit)
    if state is not None:
        query = query.where(outbox.c.state == state)
    with engine.connect() as conn:
        return [_as_row(r) for r in conn.execute(query)]


def get_row(engine: Engine, outbox_id: int) -> OutboxRow | None:
    """One outbox row, or None."""
    with engine.connect() as conn:
        row = conn.execute(select(outbox).where(outbox.c.id == outbox_id)).one_or_none()
    return None if row is None else _as_row(row)


def count_by_state(engine: Engine) -> list[tuple[dict[str, str], float]]:
    """(labels, rows) per destination and state, for the outbox gauge at scrape time."""
    query = select(outbox.c.destination, outbox.c.state, func.count()).group_by(
        outbox.c.destination, outbox.c.state
    )
    with engine.connect() as conn:
        return [({"destination": d, "state": st}, float(n)) for d, st, n in conn.execute(query)]
