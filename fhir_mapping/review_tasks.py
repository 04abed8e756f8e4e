"""Review Task variants beyond the AI-created one: deadline (SLA), secondary review, reassignment
to the backup pool, and the reviewer-escalated Task for a study the model did not flag.

FHIR R4 task.html: `restriction.period.end` is the deadline; `partOf` links a secondary review to
the original; `performerType` names the pool an open Task waits in (workflow-management.html,
Option F: open tasks are claimed by setting `owner`).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from fhir_mapping import codesystems as cs
from fhir_mapping.task import ensure_valid, fhir_instant, study_reference
from gateway.domain.model import StudyContext
from gateway.domain.priority import Priority


def pool_performer(pool: str) -> list[dict[str, Any]]:
    """performerType of an open Task waiting in a pool (pool code first, then HL7 reviewer)."""
    return [
        {
            "coding": [
                cs.coding(cs.REVIEW_POOL_SYSTEM, pool, cs.REVIEW_POOLS[pool].display),
                cs.coding(cs.PERFORMER_TYPE_SYSTEM, "reviewer", "Reviewer"),
            ]
        }
    ]


def task_pool(resource: Mapping[str, Any]) -> str:
    """The pool an open Task waits in ("reviewer" when it names none)."""
    for concept in resource.get("performerType", []):
        for coding in concept.get("coding", []):
            if coding.get("system") == cs.REVIEW_POOL_SYSTEM:
                return str(coding.get("code", "reviewer"))
    return "reviewer"


def with_deadline(
    resource: Mapping[str, Any], sla_minutes: Mapping[str, float], start: datetime
) -> dict[str, Any]:
    """The Task with `restriction.period` from `start` to start + the SLA of its priority."""
    updated = copy.deepcopy(dict(resource))
    minutes = sla_minutes.get(str(updated.get("priority", "routine")))
    if minutes is None:
        return updated
    updated["restriction"] = {
        "period": {
            "start": fhir_instant(start),
            "end": fhir_instant(start + timedelta(minutes=float(minutes))),
        }
    }
    return updated


def secondary_review_task(
    original: Mapping[str, Any],
    *,
    task_id: str,
    first_reviewer: str,
    pool: str,
    when: datetime,
) -> dict[str, Any]:
    """A requested secondary-review Task: partOf the original, same focus/for/basedOn."""
    task = copy.deepcopy(dict(original))
    for element in ("meta", "owner", "output", "executionPeriod", "relevantHistory", "restriction"):
        task.pop(element, None)
    task["meta"] = copy.deepcopy(original.get("meta", {}))
    task["meta"].pop("versionId", None)
    task["meta"].pop("lastUpdated", None)
    task["id"] = task_id
    task["status"] = "requested"
    task["businessStatus"] = cs.concept(cs.BUSINESS_STATUS_SYSTEM, "secondary-review")
    task["partOf"] = [{"reference": f"Task/{original['id']}"}]
    task["performerType"] = pool_performer(pool)
    task["authoredOn"] = task["lastModified"] = fhir_instant(when)
    inputs = [i for i in task.get("input", []) if not _is_input(i, "first-reviewer")]
    inputs.append(
        {
            "type": cs.concept(cs.INPUT_TYPE_SYSTEM, "first-reviewer"),
            "valueReference": {"reference": first_reviewer},
        }
    )
    task["input"] = inputs
    for output in original.get("output", []):
        if _is_output(output, "decision") or _is_output(output, "rationale"):
            inputs.append({"type": cs.concept(cs.INPUT_TYPE_SYSTEM, "first-decision"),
                           "valueCodeableConcept": output["valueCodeableConcept"]})  # fmt: skip
    return ensure_valid(task)


def first_reviewer(resource: Mapping[str, Any]) -> str:
    """The reviewer whose reject a secondary-review Task re-examines ("" for other Tasks)."""
    for entry in resource.get("input", []):
        if _is_input(entry, "first-reviewer"):
            return str(entry.get("valueReference", {}).get("reference", ""))
    return ""


def reassigned_to_pool(resource: Mapping[str, Any], pool: str, when: datetime) -> dict[str, Any]:
    """An overdue Task back to `requested` in another pool, without owner (R4 in-progress→ready
    re-assignment, expressed in our table as → requested)."""
    task = copy.deepcopy(dict(resource))
    task.pop("owner", None)
    task["status"] = "requested"
    task["performerType"] = pool_performer(pool)
    task["businessStatus"] = cs.concept(cs.BUSINESS_STATUS_SYSTEM, "reassigned-overdue")
    task["lastModified"] = fhir_instant(when)
    return ensure_valid(task)


def escalation_task(
    *,
    task_id: str,
    study: StudyContext,
    use_case: str,
    priority: Priority,
    requested_by: str,
    when: datetime,
    note: str = "",
) -> dict[str, Any]:
    """A requested review Task a reviewer created for a study the model did not flag."""
    task: dict[str, Any] = {
        "resourceType": "Task",
        "id": task_id,
        "status": "requested",
        "businessStatus": cs.concept(cs.BUSINESS_STATUS_SYSTEM, "escalated-by-reviewer"),
        "intent": "order",
        "priority": priority.value,
        "code": cs.concept(cs.TASK_CODE_SYSTEM, cs.TASK_CODE),
        "focus": study_reference(study.study_instance_uid),
        "requester": {"reference": requested_by},
        "performerType": pool_performer("reviewer"),
        "authoredOn": fhir_instant(when),
        "lastModified": fhir_instant(when),
        "input": [{"type": cs.concept(cs.INPUT_TYPE_SYSTEM, "use-case"), "valueString": use_case}],
    }
    if study.patient_id:
        task["for"] = {"reference": f"Patient/{study.patient_id}", "type": "Patient"}
    if study.encounter_id:
        task["encounter"] = {"reference": f"Encounter/{study.encounter_id}"}
    if note:
        task["note"] = [{"text": note, "time": fhir_instant(when)}]
    return ensure_valid(task)


def _is_input(entry: Mapping[str, Any], code: str) -> bool:
    return any(
        c.get("system") == cs.INPUT_TYPE_SYSTEM and c.get("code") == code
        for c in entry.get("type", {}).get("coding", [])
    )


def _is_output(entry: Mapping[str, Any], code: str) -> bool:
    return any(
        c.get("system") == cs.OUTPUT_TYPE_SYSTEM and c.get("code") == code
        for c in entry.get("type", {}).get("coding", [])
    )
