"""Reviewer escalation of a study the model did not flag (design: "override of 'no finding'").

Two documented ways: `POST [base]/Task` with a Task whose `focus` is the ImagingStudy creates an
open review Task (status requested, businessStatus escalated-by-reviewer); `POST
[base]/ImagingStudy/<uid>/$escalate` does that and completes it at once as an override with the
given priority and coded rationale, so the worklist is told. One open review Task per study and
use case: a second request while one is open is refused (409).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from sqlalchemy import Connection, select

from fhir_mapping import codesystems as cs
from fhir_mapping import task as task_map
from fhir_mapping.provenance import workflow_provenance
from fhir_mapping.review_tasks import escalation_task, with_deadline
from gateway.audit.trail import append_provenance, record_event
from gateway.auth.tokens import Principal
from gateway.domain.errors import (
    GatewayError,
    IllegalTransition,
    IncompleteAction,
    InvalidInput,
    NotFound,
)
from gateway.domain.model import StudyContext
from gateway.domain.priority import Priority
from gateway.persistence.tables import studies
from gateway.pipeline import Event, PipelineEvent
from gateway.reviewer_credentials import check_reviewer

ESCALATION_USE_CASE = "reviewer-escalation"


def _study(conn: Connection, uid: str) -> StudyContext:
    row = conn.execute(select(studies).where(studies.c.study_instance_uid == uid)).first()
    if row is None:
        raise NotFound(f"ImagingStudy/{uid} is not known")
    return StudyContext(
        study_instance_uid=uid, patient_id=row.patient_id, patient_name=row.patient_name,
        accession_number=row.accession_number, modality=row.modality, encounter_id=row.encounter_id,
    )  # fmt: skip


def _focus_uid(body: Mapping[str, Any]) -> str:
    reference = str(body.get("focus", {}).get("reference", ""))
    if not reference.startswith("ImagingStudy/"):
        raise InvalidInput("an escalation Task needs focus = ImagingStudy/<Study Instance UID>")
    return reference.removeprefix("ImagingStudy/")


def _priority(value: Any) -> Priority:
    try:
        return Priority(str(value))
    except ValueError:
        raise InvalidInput(
            f"priority {value!r} is not in request-priority", code="code-invalid"
        ) from None


def create_escalation(
    review: Any,
    conn: Connection,
    uid: str,
    priority: Priority,
    principal: Principal,
    request_id: str,
    note: str = "",
) -> dict[str, Any]:
    """Create the open escalation Task with Provenance and AuditEvent (caller's transaction)."""
    now = review._clock()
    study = _study(conn, uid)
    if not principal.actor.reference.startswith(("Practitioner/", "PractitionerRole/")):
        raise IncompleteAction(
            "an escalation needs the reviewer's identity (fhirUser)", code="required"
        )
    if not study.patient_id or not study.encounter_id:
        raise IncompleteAction("the study has no patient or encounter; escalation is blocked",
                               code="required")  # fmt: skip
    open_task = review.repository.find_open_for_study(conn, uid, ESCALATION_USE_CASE)
    if open_task is None:
        open_task = review.repository.find_open_for_study(conn, uid, review_use_case(review))
    if open_task is not None:
        raise IllegalTransition(f"Task/{open_task['id']} is already open for this study",
                                code="duplicate")  # fmt: skip
    task_id, provenance_id = str(uuid.uuid4()), str(uuid.uuid4())
    task = escalation_task(task_id=task_id, study=study, use_case=ESCALATION_USE_CASE,
                           priority=priority, requested_by=principal.actor.reference, when=now,
                           note=note)  # fmt: skip
    check_reviewer(conn, task, principal, review._settings, now)
    task = with_deadline(task, review._settings.review.sla_minutes, now)
    task = task_map.add_relevant_history(task, f"Provenance/{provenance_id}")
    stored: dict[str, Any] = review.repository.create(conn, task)
    versioned = f"Task/{task_id}/_history/1"
    append_provenance(
        conn,
        workflow_provenance(provenance_id=provenance_id, task_ref_versioned=versioned,
                            actor_ref=principal.actor.reference, activity="CREATE", when=now,
                            sources=(f"ImagingStudy/{uid}",)),
        study.patient_id,
    )  # fmt: skip
    record_event(
        conn,
        PipelineEvent(
            kind=Event.REVIEW_ESCALATED, actor=principal.actor, occurred_at=now,
            study_instance_uid=uid, patient_id=study.patient_id, encounter_id=study.encounter_id,
            entities=(versioned, f"Provenance/{provenance_id}"), request_id=request_id,
            subtype="create", detail={"priority": priority.value},
        ),
    )  # fmt: skip
    return stored


def review_use_case(review: Any) -> str:
    """The use case of AI-created review Tasks (the served model's)."""
    return str(getattr(review._settings.mlflow, "model_name", "cxr-pneumothorax"))


def request_review(review: Any, body: Any, principal: Principal, request_id: str) -> dict[str, Any]:
    """FHIR create of a Task: a reviewer asks for review of a study (one transaction)."""
    if not isinstance(body, Mapping) or body.get("resourceType") != "Task":
        raise InvalidInput("the body must be a FHIR Task resource")
    uid = _focus_uid(body)
    priority = _priority(body.get("priority", "urgent"))
    note = " ".join(str(n.get("text", "")) for n in body.get("note", []) if isinstance(n, Mapping))
    return _audited(review, principal, request_id, uid,
                    lambda conn: create_escalation(review, conn, uid, priority, principal,
                                                   request_id, note.strip()))  # fmt: skip


def escalate_study(
    review: Any, uid: str, parameters: Any, principal: Principal, request_id: str
) -> dict[str, Any]:
    """`$escalate`: create the Task and complete it as an override in one transaction."""
    values = _parameters(parameters)
    priority = _priority(values.get("priority", ""))
    rationale = str(values.get("rationale", ""))
    text = str(values.get("note", ""))

    def run(conn: Connection) -> dict[str, Any]:
        created = create_escalation(review, conn, uid, priority, principal, request_id, text)
        body = dict(created)
        body["status"] = "completed"
        body["output"] = [
            {"type": cs.concept(cs.OUTPUT_TYPE_SYSTEM, "decision"),
             "valueCodeableConcept": cs.concept(cs.DECISION_SYSTEM, "override")},
            {"type": cs.concept(cs.OUTPUT_TYPE_SYSTEM, "rationale"),
             "valueCodeableConcept": {"coding": [{"system": cs.RATIONALE_SYSTEM,
                                                  "code": rationale}]}},
            {"type": cs.concept(cs.OUTPUT_TYPE_SYSTEM, "override-priority"),
             "valueCode": priority.value},
        ]  # fmt: skip
        if text:
            body["output"].append({"type": cs.concept(cs.OUTPUT_TYPE_SYSTEM, "rationale-text"),
                                   "valueString": text})  # fmt: skip
        completed: dict[str, Any] = review._complete(
            conn, created["id"], body, 'W/"1"', principal, request_id
        )
        return completed

    return _audited(review, principal, request_id, uid, run)


def _parameters(parameters: Any) -> dict[str, Any]:
    if not isinstance(parameters, Mapping) or parameters.get("resourceType") != "Parameters":
        raise InvalidInput("$escalate takes a Parameters resource")
    values: dict[str, Any] = {}
    for p in parameters.get("parameter", []):
        value = next((v for k, v in p.items() if k.startswith("value")), None)
        if isinstance(value, Mapping):
            value = next((c.get("code") for c in value.get("coding", [])), None)
        values[str(p.get("name", ""))] = value
    if not values.get("rationale"):
        raise IncompleteAction("$escalate needs a coded 'rationale' parameter", code="required")
    return values


def _audited(
    review: Any, principal: Principal, request_id: str, uid: str, run: Any
) -> dict[str, Any]:
    try:
        with review._engine.begin() as conn:
            result: dict[str, Any] = run(conn)
            return result
    except GatewayError as refused:
        review._audit_refusal(f"escalation-of-{uid}"[:64], principal, refused, request_id)
        raise
