"""Automation switches (e.g. auto-escalate above a score without review) and the safety-committee
decisions that alone turn them on.

A switch is on for a scope (use case, or "*") only while a recorded decision names who decided,
when, for which scope and until when; with no current decision it is off. Each decision is audited.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, insert, select

from gateway.audit.trail import record_event
from gateway.domain.errors import InvalidInput
from gateway.domain.model import Actor
from gateway.persistence.tables import safety_decisions
from gateway.pipeline import Event, PipelineEvent

SWITCHES: dict[str, str] = {
    "auto-escalate": "Raise the worklist priority of flags at or above review.auto_escalate_"
    "threshold before a reviewer decides (the review Task is still created).",
}


@dataclass(frozen=True, slots=True)
class SafetyDecision:
    """A safety-committee decision switching automation on for a scope until an expiry."""

    switch: str
    scope: str
    decided_by: str
    decided_at: datetime
    valid_until: datetime
    reference: str


def record_decision(
    conn: Connection, decision: SafetyDecision, *, recorded_by: str, now: datetime
) -> None:
    """Store and audit a safety-committee decision (caller's transaction)."""
    if decision.switch not in SWITCHES:
        raise InvalidInput(
            f"unknown automation switch {decision.switch!r}; known: {sorted(SWITCHES)}"
        )
    if not decision.decided_by.strip() or not decision.reference.strip():
        raise InvalidInput("a safety decision names who decided and where it is minuted")
    if decision.valid_until <= decision.decided_at:
        raise InvalidInput("a safety decision must expire after it was taken")
    conn.execute(
        insert(safety_decisions).values(
            switch=decision.switch, scope=decision.scope, decided_by=decision.decided_by,
            decided_at=decision.decided_at, valid_until=decision.valid_until,
            reference=decision.reference, recorded_by=recorded_by, recorded_at=now,
        )
    )  # fmt: skip
    record_event(
        conn,
        PipelineEvent(
            kind=Event.SAFETY_DECISION_RECORDED,
            actor=Actor(reference="Device/hitl-gateway", display=recorded_by),
            occurred_at=now,
            detail={
                "switch": decision.switch, "scope": decision.scope,
                "decided-by": decision.decided_by, "decided-at": decision.decided_at.isoformat(),
                "valid-until": decision.valid_until.isoformat(), "reference": decision.reference,
            },
        ),
    )  # fmt: skip


def switch_enabled(conn: Connection, switch: str, scope: str, now: datetime) -> bool:
    """True only while a recorded decision covers the switch for the scope (or "*")."""
    row = conn.execute(
        select(safety_decisions.c.id)
        .where(
            safety_decisions.c.switch == switch,
            safety_decisions.c.scope.in_([scope, "*"]),
            safety_decisions.c.decided_at <= now,
            safety_decisions.c.valid_until > now,
        )
        .limit(1)
    ).first()
    return row is not None
