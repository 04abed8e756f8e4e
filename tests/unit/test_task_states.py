"""The review Task state table (FHIR R4 task.html#statemachine subset)."""

from __future__ import annotations

import itertools

import pytest

from gateway.domain.errors import IllegalTransition
from gateway.domain.task_states import TERMINAL, TRANSITIONS, TaskStatus, check_transition


@pytest.mark.parametrize(("current", "requested"), sorted(TRANSITIONS))
def test_declared_transitions_are_accepted(current: TaskStatus, requested: TaskStatus) -> None:
    check_transition(current, requested)


@pytest.mark.parametrize(
    ("current", "requested"),
    [
        (a, b)
        for a, b in itertools.product(TaskStatus, TaskStatus)
        if (a, b) not in TRANSITIONS and not (a is b and a not in TERMINAL)
    ],
)
def test_every_other_transition_is_refused(current: TaskStatus, requested: TaskStatus) -> None:
    with pytest.raises(IllegalTransition):
        check_transition(current, requested)


def test_terminal_states_are_left_only_to_entered_in_error() -> None:
    for state in TERMINAL:
        targets = {b for a, b in TRANSITIONS if a is state}
        assert targets <= {TaskStatus.ENTERED_IN_ERROR}


def test_rejected_is_not_reachable_from_work_in_progress() -> None:
    # `rejected` means the performer declined before starting; a clinician who rejects the AI
    # finding completes the review instead (standards.md §1.2).
    assert (TaskStatus.IN_PROGRESS, TaskStatus.REJECTED) not in TRANSITIONS
