"""Review Task variants: deadline per priority, secondary review, reassignment, escalation."""

from __future__ import annotations

from datetime import timedelta

from fhir_mapping.review_tasks import (
    escalation_task,
    first_reviewer,
    reassigned_to_pool,
    secondary_review_task,
    task_pool,
    with_deadline,
)
from fhir_mapping.task import build_review_task, check_task, parse_instant, with_version
from gateway.domain.priority import Priority
from tests.unit.fhir.samples import WHEN, score, study


def _task() -> dict[str, object]:
    task = build_review_task(
        task_id="t1", study=study(), score=score(), priority=Priority.ASAP,
        authored_on=WHEN, model_device_ref="Device/m-3",
    )  # fmt: skip
    return with_version(task, 1, WHEN)


def test_deadline_follows_the_priority() -> None:
    task = with_deadline(_task(), {"asap": 30.0}, WHEN)
    period = task["restriction"]["period"]
    assert parse_instant(period["end"]) - parse_instant(period["start"]) == timedelta(minutes=30)
    assert "restriction" not in with_deadline(_task(), {"stat": 15.0}, WHEN)


def test_secondary_review_task_links_the_original_and_names_the_first_reviewer() -> None:
    original = dict(_task(), status="completed", owner={"reference": "Practitioner/a"})
    second = secondary_review_task(
        original, task_id="t2", first_reviewer="Practitioner/a", pool="secondary-reviewer",
        when=WHEN,
    )  # fmt: skip
    check_task(second)
    assert second["partOf"] == [{"reference": "Task/t1"}]
    assert second["focus"] == original["focus"]
    assert "owner" not in second
    assert "versionId" not in second["meta"]
    assert task_pool(second) == "secondary-reviewer"
    assert first_reviewer(second) == "Practitioner/a"
    assert task_pool(original) == "reviewer"


def test_reassignment_clears_the_owner_and_moves_the_pool() -> None:
    claimed = dict(_task(), status="in-progress", owner={"reference": "Practitioner/a"})
    moved = reassigned_to_pool(claimed, "backup-reviewer", WHEN + timedelta(hours=1))
    assert moved["status"] == "requested"
    assert "owner" not in moved
    assert task_pool(moved) == "backup-reviewer"
    assert moved["businessStatus"]["coding"][0]["code"] == "reassigned-overdue"


def test_escalation_task_is_a_valid_open_review_task() -> None:
    task = escalation_task(
        task_id="t3", study=study(), use_case="reviewer-escalation", priority=Priority.STAT,
        requested_by="Practitioner/a", when=WHEN, note="missed finding",
    )  # fmt: skip
    check_task(task)
    assert task["requester"] == {"reference": "Practitioner/a"}
    assert task["for"]["reference"] == "Patient/pat-1"
    assert task["note"][0]["text"] == "missed finding"
