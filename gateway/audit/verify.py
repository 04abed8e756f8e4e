"""Verification of the audit chain defined in `gateway.audit.trail`.

The head and the highest stored `seq` are read in one statement (one snapshot), so records that
commit while the walk runs are outside the verified range instead of being reported as forged.
The walk then reads records 1..head in `seq` order, in batches by key (bounded memory, short read
transactions), and stops at the first record that fails a check. A record that is self-consistent
but does not link to its predecessor is reported where the link breaks: either it was moved or
the record before it was rewritten with a recomputed hash. Periodic signed checkpoints, not this
walk, are what detects a chain recomputed from the point of change up to a rewritten head.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC
from typing import Any

from sqlalchemy import Engine, Row, func, select

from gateway.audit.trail import (
    GENESIS_HASH,
    HEAD_ID,
    audit_event_patient,
    chain_hash,
    recorded_of,
)
from gateway.persistence.tables import audit_head, audit_log


@dataclass(frozen=True, slots=True)
class VerificationReport:
    """Outcome of one walk over the chain; `first_bad_seq` names the first failing record."""

    ok: bool
    records: int
    first_bad_seq: int | None
    reason: str
    head_seq: int = 0
    head_hash: str = ""


class _BrokenError(Exception):
    def __init__(self, seq: int, reason: str) -> None:
        super().__init__(reason)
        self.seq = seq
        self.reason = reason


def verify_chain(engine: Engine, *, batch_size: int = 1000) -> VerificationReport:
    """Walk the whole chain and report the first record that breaks it."""
    head_subquery = select(func.max(audit_log.c.seq)).scalar_subquery()
    with engine.connect() as conn:
        head = conn.execute(
            select(audit_head.c.seq, audit_head.c.hash, head_subquery).where(
                audit_head.c.id == HEAD_ID
            )
        ).one_or_none()
    if head is None:
        return VerificationReport(False, 0, 1, "audit_head is missing")
    head_seq, head_hash, max_seq = int(head[0]), str(head[1]), head[2]
    verified = 0
    try:
        if max_seq is not None and int(max_seq) > head_seq:
            # Appends advance the head in the same transaction, so this row was not appended.
            verified = head_seq
            raise _BrokenError(
                head_seq + 1, f"record {head_seq + 1} lies beyond the head ({head_seq})"
            )
        expected_prev = GENESIS_HASH
        while verified < head_seq:
            with engine.connect() as conn:
                rows = conn.execute(
                    select(audit_log)
                    .where(audit_log.c.seq > verified, audit_log.c.seq <= head_seq)
                    .order_by(audit_log.c.seq)
                    .limit(batch_size)
                ).all()
            if not rows:
                raise _BrokenError(
                    verified + 1, f"record {verified + 1} is missing (the head is at {head_seq})"
                )
            for row in rows:
                _check(row, verified + 1, expected_prev)
                expected_prev = str(row.hash)
                verified += 1
        if expected_prev != head_hash:
            raise _BrokenError(head_seq, f"record {head_seq}'s hash differs from the head's hash")
    except _BrokenError as broken:
        return VerificationReport(False, verified, broken.seq, broken.reason, head_seq, head_hash)
    return VerificationReport(True, verified, None, "", head_seq, head_hash)


def _check(row: Row[Any], seq: int, expected_prev: str) -> None:
    if row.seq != seq:
        raise _BrokenError(seq, f"record {seq} is missing (the next record is {row.seq})")
    if chain_hash(row.prev_hash, row.resource) != row.hash:
        raise _BrokenError(seq, f"record {seq}'s content does not match its hash (edited)")
    if row.prev_hash != expected_prev:
        raise _BrokenError(
            seq,
            f"record {seq} does not link to record {seq - 1} "
            f"(moved, forged, or record {seq - 1} was rewritten)",
        )
    _check_columns(row, seq)


def _check_columns(row: Row[Any], seq: int) -> None:
    # The index columns are not hashed; they must agree with the hashed resource they describe.
    try:
        document = json.loads(row.resource)
        recorded = recorded_of(document)
    except (ValueError, KeyError, TypeError) as exc:
        raise _BrokenError(seq, f"record {seq} is not a readable resource ({exc})") from exc
    if document.get("resourceType") != row.resource_type or document.get("id") != row.resource_id:
        raise _BrokenError(seq, f"record {seq}'s type/id columns differ from its resource")
    stored = row.recorded if row.recorded.tzinfo else row.recorded.replace(tzinfo=UTC)
    if stored != recorded:
        raise _BrokenError(seq, f"record {seq}'s recorded column differs from its resource")
    if row.resource_type == "AuditEvent" and row.patient_id != audit_event_patient(document):
        raise _BrokenError(seq, f"record {seq}'s patient column differs from its resource")


def format_report(report: VerificationReport) -> str:
    """One line for operators: OK with the head, or the first bad record and why."""
    if report.ok:
        return (
            f"audit chain OK: {report.records} records verified; "
            f"head seq {report.head_seq} hash {report.head_hash}"
        )
    return (
        f"audit chain BROKEN at record {report.first_bad_seq}: {report.reason} "
        f"({report.records} records verified before it)"
    )
