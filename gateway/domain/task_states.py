"""The review Task state table: a declared subset of the FHIR R4 typical Task state machine.

FHIR R4 task.html#statemachine leaves the machine to each workflow; this table is ours and the only
place transitions are decided. One addition to the typical machine is documented in
docs/review-workflow.md: `requested → completed` (claim and complete in one versioned update).
"""

from __future__ import annotations

import enum

from gateway.domain.errors import IllegalTransition


class TaskStatus(enum.StrEnum):
    """FHIR R4 task-status codes used by the gateway."""

    REQUESTED = "requested"
    ACCEPTED = "accepted"
    IN_PROGRESS = "in-progress"
    ON_HOLD = "on-hold"
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    FAILED = "failed"
    REJECTED = "rejected"
    ENTERED_IN_ERROR = "entered-in-error"


TERMINAL: frozenset[TaskStatus] = frozenset(
    {
        TaskStatus.COMPLETED,
        TaskStatus.CANCELLED,
        TaskStatus.FAILED,
        TaskStatus.REJECTED,
        TaskStatus.ENTERED_IN_ERROR,
    }
)

_S = TaskStatus
TRANSITIONS: frozenset[tuple[TaskStatus, TaskStatus]] = frozenset(
    {
        (_S.REQUESTED, _S.ACCEPTED),
        (_S.REQUESTED, _S.IN_PROGRESS),
        (_S.REQUESTED, _S.REJECTED),
        (_S.REQUESTED, _S.COMPLETED),
        (_S.ACCEPTED, _S.IN_PROGRESS),
        (_S.ACCEPTED, _S.COMPLETED),
        (_S.ACCEPTED, _S.REQUESTED),
        (_S.IN_PROGRESS, _S.COMPLETED),
        (_S.IN_PROGRESS, _S.FAILED),
        (_S.IN_PROGRESS, _S.ON_HOLD),
        (_S.IN_PROGRESS, _S.REQUESTED),
        (_S.ON_HOLD, _S.IN_PROGRESS),
    }
    | {(s, _S.CANCELLED) for s in TaskStatus if s not in TERMINAL}
    | {(s, _S.ENTERED_IN_ERROR) for s in TaskStatus if s is not _S.ENTERED_IN_ERROR}
)


def check_transition(current: TaskStatus, requested: TaskStatus) -> None:
    """Raise IllegalTransition unless the table allows `current → requested` (same: no-op)."""
    if current is requested and current not in TERMINAL:
        return
    if (current, requested) not in TRANSITIONS:
        raise IllegalTransition(
            f"Task status cannot change from '{current}' to '{requested}'", code="business-rule"
        )
