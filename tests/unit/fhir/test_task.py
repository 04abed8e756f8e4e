"""The review Task mapping: R4-valid, value sets enforced, outputs typed by the published codes."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from fhir_mapping import codesystems as cs
from fhir_mapping.r4 import Task, validate
from fhir_mapping.task import (
    AIAST_LABEL,
    add_relevant_history,
    build_review_task,
    check_task,
    complete_task,
    model_device_reference,
    task_facts,
    with_version,
)
from gateway.domain.errors import InvalidInput
from gateway.domain.model import Actor, Decision, ReviewDecision
from gateway.domain.priority import Priority
from tests.unit.fhir.samples import MODEL, STUDY_UID, WHEN, score, study


def _task(**kwargs: Any) -> dict[str, Any]:
    return build_review_task(
        task_id="t1",
        study=kwargs.pop("study", study()),
        score=score(),
        priority=Priority.URGENT,
        authored_on=WHEN,
        model_device_ref=model_device_reference(MODEL),
        **kwargs,
    )


def test_review_task_is_a_valid_open_r4_task() -> None:
    task = _task()
    validate(Task, task)
    assert (task["status"], task["intent"], task["priority"]) == ("requested", "order", "urgent")
    assert task["code"]["coding"][0]["code"] == "ai-finding-review"
    assert task["for"]["reference"] == "Patient/pat-1"
    assert task["encounter"]["reference"] == "Encounter/enc-1"
    assert task["focus"]["identifier"] == {
        "system": "urn:dicom:uid",
        "value": f"urn:oid:{STUDY_UID}",
    }
    assert task["requester"]["reference"] == "Device/hitl-gateway"
    assert task["performerType"][0]["coding"][0]["code"] == "reviewer"
    assert "owner" not in task
    assert AIAST_LABEL in task["meta"]["security"]
    assert task["businessStatus"]["coding"][0]["code"] == "awaiting-review"


def test_inputs_carry_score_model_and_thresholds() -> None:
    facts = task_facts(_task())
    assert facts.model == MODEL
    assert facts.model_device_ref == "Device/cxr-pneumothorax-3"
    assert facts.input_hash == "cd" * 32
    assert facts.thresholds is not None
    assert facts.thresholds.review == 0.8
    assert (facts.patient_id, facts.encounter_id, facts.study_instance_uid) == (
        "pat-1",
        "enc-1",
        STUDY_UID,
    )


def test_missing_context_is_visible_on_the_task() -> None:
    task = _task(study=study(encounter_id=""))
    assert "encounter" not in task
    assert task["businessStatus"]["coding"][0]["code"] == "context-missing"


@pytest.mark.parametrize(
    ("element", "value"),
    [("status", "done"), ("intent", "directive"), ("priority", "high")],
)
def test_value_sets_are_enforced(element: str, value: str) -> None:
    task = _task()
    task[element] = value
    with pytest.raises(InvalidInput):
        check_task(task)


def test_inv_1_last_modified_not_before_authored_on() -> None:
    task = _task()
    task["lastModified"] = "2026-01-01T00:00:00.000Z"
    with pytest.raises(InvalidInput, match="inv-1"):
        check_task(task)


@pytest.mark.parametrize("decision", list(Decision))
def test_completed_task_has_typed_outputs(decision: Decision) -> None:
    reviewer = Actor(reference="Practitioner/dr-1", roles=("reviewer",))
    override = Priority.STAT if decision is Decision.OVERRIDE else None
    review = ReviewDecision(
        decision=decision,
        rationale_code="other",
        reviewer=reviewer,
        rationale_text="see note",
        override_priority=override,
    )
    done = complete_task(_task(), review, WHEN + timedelta(minutes=3))
    validate(Task, done)
    assert done["status"] == "completed"
    assert done["owner"] == {"reference": "Practitioner/dr-1"}
    types = {o["type"]["coding"][0]["code"]: o for o in done["output"]}
    assert types["decision"]["valueCodeableConcept"]["coding"][0] == {
        "system": cs.DECISION_SYSTEM,
        "code": decision.value,
        "display": cs.DECISIONS[decision].display,
    }
    assert types["rationale"]["valueCodeableConcept"]["coding"][0]["code"] == "other"
    assert types["rationale-text"]["valueString"] == "see note"
    assert ("override-priority" in types) is (decision is Decision.OVERRIDE)
    assert done["lastModified"] >= done["authoredOn"]


def test_version_meta_and_relevant_history() -> None:
    task = add_relevant_history(_task(), "Provenance/p1")
    versioned = with_version(task, 4, WHEN)
    assert versioned["meta"]["versionId"] == "4"
    assert versioned["meta"]["lastUpdated"] == "2026-01-02T03:04:05.000Z"
    assert AIAST_LABEL in versioned["meta"]["security"]
    assert versioned["relevantHistory"] == [{"reference": "Provenance/p1"}]
    validate(Task, versioned)
