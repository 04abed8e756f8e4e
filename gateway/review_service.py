"""Review: the scoring step asks for a review Task; a reviewer completes it with a decision.

Each action is one transaction: the new Task version, its Provenance (listed in
`Task.relevantHistory`), the audit record and any worklist change queued in the outbox commit
together or not at all. A refused action changes nothing and is audited as REVIEW_REFUSED in a
transaction of its own. Reject records the decision and escalates nothing.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine, select

from fhir_mapping import task as task_map
from fhir_mapping.provenance import decision_provenance, scoring_provenance, workflow_provenance
from fhir_mapping.review_input import ReviewCommand, parse_task_update
from fhir_mapping.review_tasks import with_deadline
from gateway.audit.trail import append_provenance, record_event
from gateway.auth.tokens import Principal
from gateway.automation import switch_enabled
from gateway.domain.errors import (
    GatewayError,
    IncompleteAction,
    InvalidInput,
    PreconditionRequired,
    VersionConflict,
)
from gateway.domain.model import Actor, Decision, ReviewDecision, ScoreResult, StudyContext
from gateway.domain.priority import Priority
from gateway.domain.task_states import TaskStatus, check_transition
from gateway.domain.triage import proposed_priority
from gateway.domain.worklist import PRIORITY_CHANGE_KIND, PriorityChange
from gateway.outbox import enqueue
from gateway.persistence.tables import studies
from gateway.pipeline import Event, PipelineEvent
from gateway.reviewer_credentials import check_reviewer
from gateway.secondary_review import create_secondary_review, needs_secondary_review
from gateway.settings import Settings
from gateway.tasks import TaskRepository

GATEWAY_DEVICE = "Device/hitl-gateway"
_ETAG = re.compile(r'^(?:W/)?"?(?P<version>\d+)"?$')
_ESCALATING = frozenset({Decision.APPROVE, Decision.OVERRIDE})
_CLAIMING = frozenset({TaskStatus.ACCEPTED, TaskStatus.IN_PROGRESS})
GATEWAY_ACTOR = Actor(reference=GATEWAY_DEVICE, display="hitl-gateway")
UNIDENTIFIED_CLIENT = "Device/unidentified-client"


def _utcnow() -> datetime:
    return datetime.now(UTC)


def parse_if_match(if_match: str | None) -> int:
    """The version an If-Match names (`W/"3"`, `"3"`); PreconditionRequired when absent."""
    if if_match is None or not if_match.strip():
        raise PreconditionRequired('updates need If-Match: W/"<versionId>"', code="required")
    match = _ETAG.match(if_match.strip())
    if match is None:
        raise InvalidInput(f"If-Match {if_match!r} does not name a version", code="invalid")
    return int(match["version"])


class ReviewService:
    """Review Tasks: creation from a score and completion by an authorised reviewer."""

    def __init__(
        self,
        engine: Engine,
        settings: Settings,
        *,
        repository: TaskRepository | None = None,
        clock: Callable[[], datetime] = _utcnow,
        new_id: Callable[[], str] = lambda: str(uuid.uuid4()),
    ) -> None:
        self._engine = engine
        self._settings = settings
        self._clock = clock
        self._new_id = new_id
        self.repository = repository or TaskRepository(clock)

    def create_review_task(
        self,
        conn: Connection,
        study: StudyContext,
        score: ScoreResult,
        priority: Priority | None = None,
    ) -> dict[str, Any]:
        """Create the study's review Task, or re-version its open one (caller's transaction)."""
        if score.model is None or score.score is None:
            raise ValueError("only a score from a governed model asks for review")
        now = self._clock()
        chosen = priority or proposed_priority(score)
        device = task_map.model_device_reference(score.model)
        existing = self.repository.find_open_for_study(
            conn, study.study_instance_uid, score.model.use_case
        )
        provenance_id = self._new_id()
        if existing is None:
            task_id = self._new_id()
            version, prior = 1, ""
            resource = task_map.build_review_task(
                task_id=task_id,
                study=study,
                score=score,
                priority=chosen,
                authored_on=now,
                model_device_ref=device,
                gateway_device=GATEWAY_DEVICE,
            )
        else:
            task_id = str(existing["id"])
            current = int(existing["meta"]["versionId"])
            version, prior = current + 1, f"Task/{task_id}/_history/{current}"
            resource = task_map.refresh_review_task(
                existing, score=score, priority=chosen, when=now, model_device_ref=device
            )
        authored = task_map.parse_instant(resource["authoredOn"])
        resource = with_deadline(resource, self._settings.review.sla_minutes, authored)
        resource = task_map.add_relevant_history(resource, f"Provenance/{provenance_id}")
        if existing is None:
            stored = self.repository.create(conn, resource)
        else:
            stored = self.repository.update(conn, task_id, resource, version - 1)
        versioned = f"Task/{task_id}/_history/{version}"
        append_provenance(
            conn,
            scoring_provenance(
                provenance_id=provenance_id,
                task_ref_versioned=versioned,
                study_ref=task_map.study_reference(study.study_instance_uid),
                model_device_ref=device,
                input_hash=score.input_hash,
                when=now,
                gateway_device_ref=GATEWAY_DEVICE,
                prior_task_version_ref=prior,
            ),
            study.patient_id,
        )
        record_event(
            conn,
            PipelineEvent(
                kind=Event.REVIEW_REQUESTED,
                actor=GATEWAY_ACTOR,
                occurred_at=now,
                study_instance_uid=study.study_instance_uid,
                patient_id=study.patient_id,
                encounter_id=study.encounter_id,
                model=score.model,
                input_hash=score.input_hash,
                thresholds=score.thresholds,
                entities=(versioned, f"Provenance/{provenance_id}"),
                subtype="create" if existing is None else "update",
                detail={"score": f"{score.score:.6f}", "priority": chosen.value},
            ),
        )
        if score.score >= self._settings.review.auto_escalate_threshold and switch_enabled(
            conn, "auto-escalate", score.model.use_case, now
        ):
            self._auto_escalate(conn, stored, now)
        return stored

    def _auto_escalate(self, conn: Connection, stored: Mapping[str, Any], now: datetime) -> None:
        """Queue the worklist priority change before review (automation switch on by decision)."""
        facts = task_map.task_facts(stored)
        command = ReviewCommand(TaskStatus.REQUESTED, decision=Decision.APPROVE)
        version = int(stored["meta"]["versionId"])
        try:
            change = self._worklist_message(conn, facts, command, version, now)
        except IncompleteAction:
            return  # the worklist cannot be told (no accession); the human review decides
        if change is None:
            return
        for destination in self._settings.worklist.all_destinations():
            enqueue(
                conn,
                destination=destination.name,
                idempotency_key=f"auto:{change.idempotency_key}",
                study_uid=facts.study_instance_uid,
                kind=PRIORITY_CHANGE_KIND,
                payload=change.to_json(),
                actor=GATEWAY_ACTOR,
                patient_id=facts.patient_id,
                now=now,
                encounter_id=facts.encounter_id,
            )

    def complete(
        self,
        task_id: str,
        body: Any,
        if_match: str | None,
        principal: Principal,
        request_id: str = "",
    ) -> dict[str, Any]:
        """Apply a reviewer's Task update (FHIR R4 http.html#update) in one transaction."""
        try:
            with self._engine.begin() as conn:
                return self._complete(conn, task_id, body, if_match, principal, request_id)
        except GatewayError as refused:
            self._audit_refusal(task_id, principal, refused, request_id)
            raise

    def _complete(
        self,
        conn: Connection,
        task_id: str,
        body: Any,
        if_match: str | None,
        principal: Principal,
        request_id: str,
    ) -> dict[str, Any]:
        expected = parse_if_match(if_match)
        current = self.repository.read(conn, task_id)
        current_version = int(current["meta"]["versionId"])
        if expected != current_version:
            raise VersionConflict(
                f"If-Match names version {expected}; Task/{task_id} is at {current_version}"
            )
        check_reviewer(conn, current, principal, self._settings, self._clock())
        command = parse_task_update(body, current)
        reviewer = principal.actor
        if not reviewer.reference.startswith(("Practitioner/", "PractitionerRole/")):
            raise IncompleteAction(
                "a decision needs the reviewer's identity (token claim fhirUser)", code="required"
            )
        facts = task_map.task_facts(current)
        if not facts.patient_id or not facts.encounter_id:
            raise IncompleteAction(
                "the Task has no patient or encounter; no downstream action is allowed",
                code="required",
            )
        check_transition(TaskStatus(facts.status), command.requested_status)
        now = self._clock()
        if command.decision is None:
            owner = reviewer.reference if command.requested_status in _CLAIMING else ""
            updated = task_map.change_status(current, command.requested_status, now, owner)
            return self._store(conn, current, updated, None, principal, request_id, now)
        decision = ReviewDecision(
            decision=command.decision,
            rationale_code=command.rationale_code,
            reviewer=reviewer,
            rationale_text=command.rationale_text,
            override_priority=command.override_priority,
        )
        completed = task_map.complete_task(current, decision, now)
        return self._store(conn, current, completed, command, principal, request_id, now)

    def _store(
        self,
        conn: Connection,
        current: Mapping[str, Any],
        updated: dict[str, Any],
        command: ReviewCommand | None,
        principal: Principal,
        request_id: str,
        now: datetime,
    ) -> dict[str, Any]:
        facts = task_map.task_facts(current)
        old_version = int(current["meta"]["versionId"])
        new_version = old_version + 1
        versioned = f"Task/{facts.task_id}/_history/{new_version}"
        worklist = self._worklist_message(conn, facts, command, new_version, now)
        provenance_id = self._new_id()
        updated = task_map.add_relevant_history(updated, f"Provenance/{provenance_id}")
        stored = self.repository.update(conn, facts.task_id, updated, old_version)
        entities: tuple[str, ...] = (versioned, f"Provenance/{provenance_id}")
        if command is None or command.decision is None:
            append_provenance(
                conn,
                workflow_provenance(
                    provenance_id=provenance_id,
                    task_ref_versioned=versioned,
                    actor_ref=principal.actor.reference,
                    activity="UPDATE",
                    when=now,
                    prior_task_version_ref=f"Task/{facts.task_id}/_history/{old_version}",
                ),
                facts.patient_id,
            )
        else:
            append_provenance(
                conn,
                decision_provenance(
                    provenance_id=provenance_id,
                    task_ref_versioned=versioned,
                    reviewer=principal.actor,
                    study_ref=task_map.study_reference(facts.study_instance_uid),
                    model_device_ref=facts.model_device_ref or GATEWAY_DEVICE,
                    decision=command.decision,
                    when=now,
                    prior_task_version_ref=f"Task/{facts.task_id}/_history/{old_version}",
                ),
                facts.patient_id,
            )
        detail = {"status": str(stored["status"])}
        if command is not None and command.decision is not None:
            detail["decision"] = command.decision.value
            if command.override_priority is not None:
                detail["override-priority"] = command.override_priority.value
        record_event(
            conn,
            PipelineEvent(
                kind=Event.DECISION_RECORDED
                if command is not None and command.decision is not None
                else Event.REVIEW_STATUS_CHANGED,
                actor=principal.actor,
                occurred_at=now,
                study_instance_uid=facts.study_instance_uid,
                patient_id=facts.patient_id,
                encounter_id=facts.encounter_id,
                model=facts.model,
                input_hash=facts.input_hash,
                thresholds=facts.thresholds,
                rationale=_rationale(command),
                entities=entities,
                detail=detail,
                request_id=request_id,
                subtype="update",
            ),
        )
        if worklist is not None:
            for destination in self._settings.worklist.all_destinations():
                enqueue(
                    conn,
                    destination=destination.name,
                    idempotency_key=worklist.idempotency_key,
                    study_uid=facts.study_instance_uid,
                    kind=PRIORITY_CHANGE_KIND,
                    payload=worklist.to_json(),
                    actor=principal.actor,
                    patient_id=facts.patient_id,
                    now=now,
                    encounter_id=facts.encounter_id,
                    request_id=request_id,
                )
        if command is not None and needs_secondary_review(stored, command.decision, self._settings):
            create_secondary_review(
                conn, self.repository, stored, principal.actor, self._settings, now, request_id
            )
        return stored

    def _worklist_message(
        self,
        conn: Connection,
        facts: task_map.TaskFacts,
        command: ReviewCommand | None,
        new_version: int,
        now: datetime,
    ) -> PriorityChange | None:
        """The priority change for an escalating decision, built before any write (gaps refuse)."""
        if command is None or command.decision not in _ESCALATING:
            return None
        if not self._settings.worklist.all_destinations():
            return None
        priority = command.override_priority or facts.priority
        row = conn.execute(
            select(studies.c.patient_name, studies.c.accession_number).where(
                studies.c.study_instance_uid == facts.study_instance_uid
            )
        ).first()
        accession = row.accession_number if row is not None else ""
        if not accession:
            raise IncompleteAction(
                "the study has no accession number, so the worklist cannot be updated",
                code="required",
            )
        try:
            return PriorityChange(
                idempotency_key=f"{facts.task_id}:{new_version}",
                study_instance_uid=facts.study_instance_uid,
                accession_number=accession,
                patient_id=facts.patient_id,
                patient_name=row.patient_name if row is not None else "",
                encounter_id=facts.encounter_id,
                priority=priority,
                requested_at=now,
                filler_order_number=accession,
            )
        except InvalidInput as exc:
            raise IncompleteAction(
                f"the worklist message cannot be built: {exc.message}", code="required"
            ) from exc

    def _audit_refusal(
        self, task_id: str, principal: Principal, refused: GatewayError, request_id: str
    ) -> None:
        with self._engine.begin() as conn:
            try:
                facts: task_map.TaskFacts | None = task_map.task_facts(
                    self.repository.read(conn, task_id)
                )
            except GatewayError:
                facts = None
            record_event(
                conn,
                PipelineEvent(
                    kind=Event.REVIEW_REFUSED,
                    actor=audit_actor(principal.actor),
                    occurred_at=self._clock(),
                    study_instance_uid=facts.study_instance_uid if facts else "",
                    patient_id=facts.patient_id if facts else "",
                    encounter_id=facts.encounter_id if facts else "",
                    outcome="4",
                    outcome_desc=f"{type(refused).__name__}: {refused.message}",
                    entities=(f"Task/{task_id}",),
                    request_id=request_id,
                    subtype="update",
                    detail={"refusal": refused.code},
                ),
            )


def audit_actor(actor: Actor) -> Actor:
    """The actor as audited: a token without fhirUser is still named, as an unidentified client."""
    if actor.reference:
        return actor
    return replace(actor, reference=UNIDENTIFIED_CLIENT, display="client without fhirUser")


def _rationale(command: ReviewCommand | None) -> str:
    if command is None or not command.rationale_code:
        return ""
    if command.rationale_text:
        return f"{command.rationale_code}: {command.rationale_text}"
    return command.rationale_code
