"""Retention: legal holds and the purge of audit records past the retention period.

A purge removes, in one transaction, every record up to a `through_seq` that is older than the
cut-off and not under a legal hold, and leaves the rest verifiable: a signed purge-bridge
checkpoint names the hash of record `through_seq` (where the walk resumes) and the digest of the
records kept below it, an `audit_purge` row lets the database triggers allow exactly those
deletes, and an AuditEvent records the purge in the chain. `through_seq` is the last record
before the first one recorded at or after the cut-off, so nothing younger is ever removed.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine, and_, delete, func, insert, or_, select, update

from gateway.audit.activity import activity_event
from gateway.audit.checkpoint import create_checkpoint, lock_head, retained_digest
from gateway.audit.signing import AuditKeyring
from gateway.audit.trail import append
from gateway.domain.errors import InvalidInput, NotFound
from gateway.domain.model import Actor
from gateway.persistence.tables import (
    audit_checkpoint,
    audit_index,
    audit_legal_hold,
    audit_log,
    audit_purge,
)
from gateway.settings import MIN_RETENTION_YEARS


class RetentionRefused(InvalidInput):
    """A purge would remove records younger than the retention period."""

    code = "business-rule"


@dataclass(frozen=True, slots=True)
class LegalHold:
    """Records of a patient and/or a period that no purge may remove until released."""

    id: str
    patient_id: str
    period_start: datetime | None
    period_end: datetime | None
    reason: str
    created_by: str
    created_at: datetime
    released_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class PurgeResult:
    """What a purge did."""

    through_seq: int
    removed: int
    kept_on_hold: int
    checkpoint_number: int


def retention_cutoff(now: datetime, years: int) -> datetime:
    """The instant `years` calendar years before `now` (29 February falls back to the 28th)."""
    if years < MIN_RETENTION_YEARS:
        raise RetentionRefused(f"retention of {years} years is below {MIN_RETENTION_YEARS}")
    try:
        return now.replace(year=now.year - years)
    except ValueError:
        return now.replace(year=now.year - years, day=28)


def place_hold(
    engine: Engine,
    *,
    actor: Actor,
    reason: str,
    patient_id: str = "",
    period_start: datetime | None = None,
    period_end: datetime | None = None,
    now: datetime | None = None,
) -> LegalHold:
    """Place a legal hold by patient, period or both (audited in the same transaction)."""
    if not reason.strip():
        raise InvalidInput("a legal hold needs a reason", code="required")
    if not patient_id and period_start is None and period_end is None:
        raise InvalidInput("a legal hold names a patient, a period or both", code="required")
    if period_start and period_end and period_end < period_start:
        raise InvalidInput("the hold's period ends before it starts", code="value")
    moment = now or datetime.now(UTC)
    hold = LegalHold(
        str(uuid.uuid4()), patient_id, period_start, period_end, reason, actor.reference, moment
    )
    with engine.begin() as conn:
        conn.execute(
            insert(audit_legal_hold).values(
                id=hold.id,
                patient_id=patient_id,
                period_start=period_start,
                period_end=period_end,
                reason=reason,
                created_by=actor.reference,
                created_at=moment,
            )
        )
        append(conn, "AuditEvent", _hold_event("legal-hold-placed", hold, actor, moment, "C"))
    return hold


def release_hold(
    engine: Engine, hold_id: str, *, actor: Actor, now: datetime | None = None
) -> LegalHold:
    """Release a hold (audited); its records become purgeable once past retention."""
    moment = now or datetime.now(UTC)
    with engine.begin() as conn:
        found = [h for h in _holds(conn, active_only=True) if h.id == hold_id]
        if not found:
            raise NotFound(f"no active legal hold {hold_id}")
        conn.execute(
            update(audit_legal_hold)
            .where(audit_legal_hold.c.id == hold_id)
            .values(released_at=moment)
        )
        append(conn, "AuditEvent", _hold_event("legal-hold-released", found[0], actor, moment, "U"))
    return found[0]


def list_holds(engine: Engine, *, active_only: bool = True) -> list[LegalHold]:
    """Legal holds, oldest first."""
    with engine.connect() as conn:
        return _holds(conn, active_only=active_only)


def purge(
    engine: Engine,
    keyring: AuditKeyring,
    *,
    before: datetime,
    retention_years: int,
    actor: Actor,
    now: datetime | None = None,
) -> PurgeResult:
    """Remove records recorded before `before` that are past retention and not on hold."""
    moment = now or datetime.now(UTC)
    cutoff = retention_cutoff(moment, retention_years)
    if before.tzinfo is None:
        raise InvalidInput("the purge date must carry a time zone", code="value")
    if before > cutoff:
        raise RetentionRefused(
            f"records from {before.date()} are younger than the retention period of "
            f"{retention_years} years (nothing after {cutoff.date()} may be purged)"
        )
    with engine.begin() as conn:
        lock_head(conn)
        previous = conn.execute(select(func.max(audit_purge.c.through_seq))).scalar() or 0
        first_young = conn.execute(
            select(func.min(audit_log.c.seq)).where(audit_log.c.recorded >= before)
        ).scalar()
        last_old = conn.execute(select(func.max(audit_log.c.seq))).scalar() or 0
        through = int(first_young) - 1 if first_young is not None else int(last_old)
        # A released hold makes records below an earlier bridge purgeable again.
        through = max(through, int(previous))
        held = _held(conn, _holds(conn, active_only=True), through)
        removable = conn.execute(
            select(func.count()).select_from(audit_log).where(audit_log.c.seq <= through)
        ).scalar_one() - len(held)
        if removable == 0:
            return PurgeResult(through, 0, len(held), 0)
        bridge_hash = conn.execute(
            select(audit_log.c.hash).where(audit_log.c.seq == through)
        ).scalar_one_or_none() or _previous_bridge_hash(conn)
        checkpoint = create_checkpoint(
            conn,
            keyring,
            "purge-bridge",
            at=(through, bridge_hash),
            retained=retained_digest(held),
            now=moment,
        )
        purge_id = int(conn.execute(select(func.count()).select_from(audit_purge)).scalar_one())
        conn.execute(
            insert(audit_purge).values(
                id=purge_id + 1,
                through_seq=through,
                checkpoint_number=checkpoint.number,
                before=before,
                removed=removable,
                purged_at=moment,
            )
        )
        kept = [seq for seq, _ in held]
        conn.execute(
            delete(audit_index).where(audit_index.c.seq <= through, audit_index.c.seq.not_in(kept))
        )
        conn.execute(
            delete(audit_log).where(audit_log.c.seq <= through, audit_log.c.seq.not_in(kept))
        )
        append(
            conn,
            "AuditEvent",
            activity_event(
                "retention-purge",
                actor=actor,
                action="D",
                when=moment,
                detail={
                    "purged-through-seq": str(through),
                    "purged-before": before.isoformat(),
                    "records-removed": str(removable),
                    "records-kept-on-hold": str(len(held)),
                    "bridge-checkpoint": str(checkpoint.number),
                    "retention-years": str(retention_years),
                },
            ),
        )
    return PurgeResult(through, int(removable), len(held), checkpoint.number)


def _previous_bridge_hash(conn: Connection) -> str:
    number = conn.execute(
        select(audit_purge.c.checkpoint_number).order_by(audit_purge.c.id.desc()).limit(1)
    ).scalar_one()
    return str(
        conn.execute(
            select(audit_checkpoint.c.hash).where(audit_checkpoint.c.number == number)
        ).scalar_one()
    )


def _held(conn: Connection, holds: Sequence[LegalHold], through: int) -> list[tuple[int, str]]:
    if not holds:
        return []
    conditions = []
    for hold in holds:
        parts = []
        if hold.patient_id:
            parts.append(audit_log.c.patient_id == hold.patient_id)
        if hold.period_start is not None:
            parts.append(audit_log.c.recorded >= hold.period_start)
        if hold.period_end is not None:
            parts.append(audit_log.c.recorded < hold.period_end)
        conditions.append(and_(*parts))
    rows = conn.execute(
        select(audit_log.c.seq, audit_log.c.hash)
        .where(audit_log.c.seq <= through, or_(*conditions))
        .order_by(audit_log.c.seq)
    ).all()
    return [(int(r.seq), str(r.hash)) for r in rows]


def _holds(conn: Connection, *, active_only: bool) -> list[LegalHold]:
    query = select(audit_legal_hold).order_by(audit_legal_hold.c.created_at)
    if active_only:
        query = query.where(audit_legal_hold.c.released_at.is_(None))
    return [
        LegalHold(
            r.id,
            r.patient_id,
            r.period_start,
            r.period_end,
            r.reason,
            r.created_by,
            r.created_at,
            r.released_at,
        )
        for r in conn.execute(query)
    ]


def _hold_event(
    activity: str, hold: LegalHold, actor: Actor, when: datetime, action: str
) -> dict[str, Any]:
    return activity_event(
        activity,
        actor=actor,
        action=action,
        when=when,
        patient_id=hold.patient_id,
        detail={
            "legal-hold-id": hold.id,
            "reason": hold.reason,
            "period-start": hold.period_start.isoformat() if hold.period_start else "",
            "period-end": hold.period_end.isoformat() if hold.period_end else "",
        },
    )
