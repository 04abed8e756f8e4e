"""Secondary review: a reject of a flag scored at or above the secondary threshold asks a second
reviewer (design: "reject of a score >= secondary threshold → secondary-review Task").

The new Task is `partOf` the original, keeps its `focus`, `for` and `basedOn`, waits in the
secondary-reviewer pool, and records the first reviewer so that another must decide.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import Connection

from fhir_mapping import codesystems as cs
from fhir_mapping import task as task_map
from fhir_mapping.provenance import workflow_provenance
from fhir_mapping.review_tasks import secondary_review_task, task_pool, with_deadline
from gateway.audit.trail import append_provenance, record_event
from gateway.domain.model import Actor, Decision
from gateway.pipeline import Event, PipelineEvent
from gateway.settings import Settings
from gateway.tasks import TaskRepository

GATEWAY_DEVICE = "Device/hitl-gateway"


def ai_score(task: Mapping[str, Any]) -> float | None:
    """The AI score input of a review Task, if it has one."""
    for entry in task.get("input", []):
        for coding in entry.get("type", {}).get("coding", []):
            if coding.get("system") == cs.INPUT_TYPE_SYSTEM and coding.get("code") == "ai-score":
                value = entry.get("valueDecimal")
                return float(value) if value is not None else None
    return None


def needs_secondary_review(
    task: Mapping[str, Any], decision: Decision | None, settings: Settings
) -> bool:
    """True for a reject of a flag at or above the secondary threshold, outside secondary review."""
    if decision is not Decision.REJECT or task_pool(task) == settings.review.secondary_pool:
        return False
    score = ai_score(task)
    facts = task_map.task_facts(task)
    threshold = (
        facts.thresholds.secondary_review
        if facts.thresholds
        else settings.review.secondary_threshold
    )
    return score is not None and score >= threshold


def create_secondary_review(
    conn: Connection,
    repository: TaskRepository,
    completed: Mapping[str, Any],
    reviewer: Actor,
    settings: Settings,
    now: datetime,
    request_id: str = "",
) -> dict[str, Any]:
    """Create the secondary-review Task, its Provenance and AuditEvent (caller's transaction)."""
    task_id = str(uuid.uuid4())
    provenance_id = str(uuid.uuid4())
    task = secondary_review_task(
        completed, task_id=task_id, first_reviewer=reviewer.reference,
        pool=settings.review.secondary_pool, when=now,
    )  # fmt: skip
    task = with_deadline(task, settings.review.sla_minutes, now)
    task = task_map.add_relevant_history(task, f"Provenance/{provenance_id}")
    stored = repository.create(conn, task)
    facts = task_map.task_facts(stored)
    versioned = f"Task/{task_id}/_history/1"
    original = f"Task/{completed['id']}/_history/{completed['meta']['versionId']}"
    append_provenance(
        conn,
        workflow_provenance(
            provenance_id=provenance_id, task_ref_versioned=versioned,
            actor_ref=GATEWAY_DEVICE, activity="CREATE", when=now, sources=(original,),
        ),
        facts.patient_id,
    )  # fmt: skip
    record_event(
        conn,
        PipelineEvent(
            kind=Event.SECONDARY_REVIEW_REQUESTED,
            actor=Actor(reference=GATEWAY_DEVICE, display="hitl-gateway"),
            occurred_at=now,
            study_instance_uid=facts.study_instance_uid,
            patient_id=facts.patient_id,
            encounter_id=facts.encounter_id,
            model=facts.model,
            thresholds=facts.thresholds,
            entities=(versioned, original, f"Provenance/{provenance_id}"),
            request_id=request_id,
            subtype="create",
            detail={"first-reviewer": reviewer.reference, "pool": settings.review.secondary_pool},
        ),
    )
    return stored
