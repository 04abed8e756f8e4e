"""Review rules: the decision/rationale matrix and the 400/422 refusals of a Task update."""

from __future__ import annotations

from typing import Any

import pytest

from fhir_mapping import codesystems as cs
from fhir_mapping.review_input import parse_task_update
from fhir_mapping.task import build_review_task, model_device_reference, with_version
from gateway.domain.errors import IncompleteAction, InvalidInput
from gateway.domain.model import Decision
from gateway.domain.priority import Priority
from gateway.domain.task_states import TaskStatus
from tests.unit.fhir.samples import MODEL, WHEN, decision_body, score, study


@pytest.fixture
def current() -> dict[str, Any]:
    task = build_review_task(
        task_id="t1",
        study=study(),
        score=score(),
        priority=Priority.URGENT,
        authored_on=WHEN,
        model_device_ref=model_device_reference(MODEL),
    )
    return with_version(task, 1, WHEN)


MATRIX = [
    (decision, rationale.code) for decision in Decision for rationale in cs.RATIONALES.values()
]


@pytest.mark.parametrize(("decision", "rationale"), MATRIX)
def test_decision_rationale_matrix(
    current: dict[str, Any], decision: Decision, rationale: str
) -> None:
    override = "stat" if decision is Decision.OVERRIDE else None
    body = decision_body(current, decision.value, rationale, text="why", override=override)
    if decision in cs.RATIONALES[rationale].decisions:
        command = parse_task_update(body, current)
        assert command.decision is decision
        assert command.rationale_code == rationale
        assert command.requested_status is TaskStatus.COMPLETED
    else:
        with pytest.raises(IncompleteAction, match="cannot justify"):
            parse_task_update(body, current)


def test_override_carries_priority(current: dict[str, Any]) -> None:
    body = decision_body(current, "override", "priority-too-low", override="stat")
    assert parse_task_update(body, current).override_priority is Priority.STAT


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"decision": None}, "decision"),
        ({"rationale": None}, "rationale"),
        ({"decision": "maybe"}, "not in"),
        ({"rationale": "gut-feeling"}, "not in"),
        ({"decision": "approve", "rationale": "other"}, "free text"),
        ({"decision": "override", "rationale": "priority-too-low"}, "override-priority"),
        (
            {"decision": "override", "rationale": "priority-too-low", "override": "high"},
            "request-priority",
        ),
        ({"decision": "approve", "override": "stat"}, "only an override"),
        ({"status": "draft"}, "not used"),
    ],
)
def test_incomplete_actions_are_422(
    current: dict[str, Any], kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(IncompleteAction, match=message):
        parse_task_update(decision_body(current, **kwargs), current)


def test_other_with_free_text_is_accepted(current: dict[str, Any]) -> None:
    body = decision_body(current, "reject", "other", text="motion blur on the apex")
    assert parse_task_update(body, current).rationale_text == "motion blur on the apex"


@pytest.mark.parametrize(
    "mutate",
    [
        lambda b: b.update(resourceType="Patient"),
        lambda b: b.update(id="other"),
        lambda b: b.update(status="finished"),
        lambda b: b.update(intent="directive"),
        lambda b: b.update(input=[{"type": {"text": "no value"}}]),
    ],
)
def test_malformed_bodies_are_400(current: dict[str, Any], mutate: Any) -> None:
    body = decision_body(current)
    mutate(body)
    with pytest.raises(InvalidInput):
        parse_task_update(body, current)


def test_non_object_body_is_400(current: dict[str, Any]) -> None:
    with pytest.raises(InvalidInput):
        parse_task_update([1, 2], current)


def test_claim_is_a_status_only_command(current: dict[str, Any]) -> None:
    body = decision_body(current, decision=None, rationale=None, status="in-progress")
    command = parse_task_update(body, current)
    assert command.requested_status is TaskStatus.IN_PROGRESS
    assert command.decision is None
