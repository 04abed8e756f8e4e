"""The whole data flow in one table: event → producer, next step, and how it is audited.

Steps are driven by durable state (rows claimed with `UPDATE … RETURNING`), not by in-memory
messages, so a restart loses nothing; this table is the map of those steps. Audit and metrics
subscribe to every event through `PipelineEvent`, written in the same transaction as the state
change it describes.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from gateway.domain.model import Actor, ModelIdentity, Thresholds


class Event(enum.StrEnum):
    """Every arrow of the flow."""

    INSTANCE_STORED = "instance-stored"
    INSTANCE_REFUSED = "instance-refused"
    INSTANCES_TRANSFERRED = "instances-transferred"
    STUDY_STABLE = "study-stable"
    STUDY_SCORED = "study-scored"
    STANDARD_TRIAGE = "standard-triage"
    REVIEW_REQUESTED = "review-requested"
    REVIEW_REFUSED = "review-refused"
    DECISION_RECORDED = "decision-recorded"
    WORKLIST_QUEUED = "worklist-queued"
    WORKLIST_ATTEMPTED = "worklist-attempted"
    WORKLIST_DELIVERED = "worklist-delivered"
    WORKLIST_DEAD_LETTERED = "worklist-dead-lettered"
    AUTHENTICATION_FAILED = "authentication-failed"
    STUDY_UNROUTED = "study-unrouted"
    MODEL_REGISTERED = "model-registered"
    MODEL_APPROVED = "model-approved"
    MODEL_PROMOTED = "model-promoted"
    MODEL_ROLLED_BACK = "model-rolled-back"
    MODEL_REFUSED = "model-refused"
    MODEL_ALIAS_CHANGED = "model-alias-changed"
    SCORING_WORKER_HUNG = "scoring-worker-hung"
    REVIEW_STATUS_CHANGED = "review-status-changed"
    SECONDARY_REVIEW_REQUESTED = "secondary-review-requested"
    REVIEW_ESCALATED = "review-escalated"
    REVIEW_OVERDUE = "review-overdue"
    REVIEWER_CREDENTIALED = "reviewer-credentialed"
    SAFETY_DECISION_RECORDED = "safety-decision-recorded"
    AUTHORIZATION_FAILED = "authorization-failed"
    SUBSCRIPTION_CHANGED = "subscription-changed"
    NOTIFICATION_ATTEMPTED = "notification-attempted"


@dataclass(frozen=True, slots=True)
class Stage:
    """One row of the pipeline table."""

    event: Event
    produced_by: str
    next_step: str
    audit_type: tuple[str, str, str]  # (system, code, display) of AuditEvent.type
    action: str  # AuditEvent.action: C R U D E


DCM = "http://dicom.nema.org/resources/ontology/DCM"
REST = "http://terminology.hl7.org/CodeSystem/audit-event-type"

PIPELINE: dict[Event, Stage] = {
    s.event: s
    for s in (
        Stage(
            Event.INSTANCE_STORED,
            "gateway.listeners.dimse",
            "assembly: push the study's quiet deadline",
            (DCM, "110104", "DICOM Instances Transferred"),
            "C",
        ),
        Stage(
            Event.INSTANCE_REFUSED,
            "gateway.listeners.dimse",
            "none: the sender got a failure status",
            (DCM, "110104", "DICOM Instances Transferred"),
            "C",
        ),
        Stage(
            Event.INSTANCES_TRANSFERRED,
            "gateway.transfer_audit",
            "none: one summary per association or STOW-RS request",
            (DCM, "110104", "DICOM Instances Transferred"),
            "C",
        ),
        Stage(
            Event.STUDY_STABLE,
            "gateway.assembly",
            "scoring: route and score the study",
            (DCM, "110100", "Application Activity"),
            "E",
        ),
        Stage(
            Event.STUDY_SCORED,
            "gateway.scoring_step",
            "review: Task if the score reaches the threshold",
            (DCM, "110100", "Application Activity"),
            "C",
        ),
        Stage(
            Event.STANDARD_TRIAGE,
            "gateway.scoring_step",
            "none: the study keeps standard triage",
            (DCM, "110100", "Application Activity"),
            "C",
        ),
        Stage(
            Event.REVIEW_REQUESTED,
            "gateway.scoring_step",
            "reviewer: complete the Task",
            (REST, "rest", "RESTful Operation"),
            "C",
        ),
        Stage(
            Event.REVIEW_REFUSED,
            "gateway.review_service",
            "none: the request changed nothing",
            (REST, "rest", "RESTful Operation"),
            "U",
        ),
        Stage(
            Event.DECISION_RECORDED,
            "gateway.review_service",
            "worklist: queue the priority change",
            (REST, "rest", "RESTful Operation"),
            "U",
        ),
        Stage(
            Event.WORKLIST_QUEUED,
            "gateway.review_service",
            "dispatcher: deliver until acknowledged",
            (DCM, "110109", "Order Record"),
            "U",
        ),
        Stage(
            Event.WORKLIST_ATTEMPTED,
            "gateway.outbox",
            "dispatcher: retry with backoff",
            (DCM, "110109", "Order Record"),
            "U",
        ),
        Stage(
            Event.WORKLIST_DELIVERED,
            "gateway.outbox",
            "none: the RIS acknowledged",
            (DCM, "110109", "Order Record"),
            "U",
        ),
        Stage(
            Event.WORKLIST_DEAD_LETTERED,
            "gateway.outbox",
            "operator: inspect and replay",
            (DCM, "110109", "Order Record"),
            "U",
        ),
        Stage(
            Event.AUTHENTICATION_FAILED,
            "gateway.listeners.http",
            "none: 401/403 answered",
            (DCM, "110114", "User Authentication"),
            "E",
        ),
        Stage(
            Event.STUDY_UNROUTED,
            "gateway.scoring_step",
            "none: no use case routes the study; recorded, not scored",
            (DCM, "110100", "Application Activity"),
            "E",
        ),
        Stage(
            Event.MODEL_REGISTERED,
            "scoring.governance",
            "approvers: review and approve the version",
            (DCM, "110100", "Application Activity"),
            "C",
        ),
        Stage(
            Event.MODEL_APPROVED,
            "scoring.governance",
            "promote: evaluate the promotion policy",
            (DCM, "110100", "Application Activity"),
            "U",
        ),
        Stage(
            Event.MODEL_PROMOTED,
            "scoring.governance",
            "gateway: serve the version at the next registry poll",
            (DCM, "110100", "Application Activity"),
            "U",
        ),
        Stage(
            Event.MODEL_ROLLED_BACK,
            "scoring.governance",
            "gateway: serve the earlier version at the next registry poll",
            (DCM, "110100", "Application Activity"),
            "U",
        ),
        Stage(
            Event.MODEL_REFUSED,
            "scoring.governance",
            "none: the registry and the alias are unchanged",
            (DCM, "110100", "Application Activity"),
            "E",
        ),
        Stage(
            Event.MODEL_ALIAS_CHANGED,
            "scoring.runner",
            "scoring: the next study is scored by the served version",
            (DCM, "110100", "Application Activity"),
            "E",
        ),
        Stage(
            Event.SCORING_WORKER_HUNG,
            "gateway.scoring_step",
            "operator: the study kept standard triage; the worker was replaced",
            (DCM, "110100", "Application Activity"),
            "E",
        ),
        Stage(
            Event.REVIEW_STATUS_CHANGED,
            "gateway.review_service",
            "reviewer: complete the claimed (or released) Task",
            (REST, "rest", "RESTful Operation"),
            "U",
        ),
        Stage(
            Event.SECONDARY_REVIEW_REQUESTED,
            "gateway.secondary_review",
            "secondary reviewer: complete the secondary-review Task",
            (REST, "rest", "RESTful Operation"),
            "C",
        ),
        Stage(
            Event.REVIEW_ESCALATED,
            "gateway.escalation",
            "reviewer: complete the escalation Task (or worklist, when decided at once)",
            (REST, "rest", "RESTful Operation"),
            "C",
        ),
        Stage(
            Event.REVIEW_OVERDUE,
            "gateway.review_sla",
            "backup pool: review the reassigned Task",
            (DCM, "110100", "Application Activity"),
            "U",
        ),
        Stage(
            Event.REVIEWER_CREDENTIALED,
            "gateway.reviewer_credentials",
            "reviewer: may decide until the credential expires",
            (DCM, "110100", "Application Activity"),
            "U",
        ),
        Stage(
            Event.SAFETY_DECISION_RECORDED,
            "gateway.automation",
            "automation: the switch is on for its scope until the decision expires",
            (DCM, "110100", "Application Activity"),
            "C",
        ),
        Stage(
            Event.AUTHORIZATION_FAILED,
            "gateway.listeners.http",
            "none: 403 answered",
            (DCM, "110113", "Security Alert"),
            "E",
        ),
        Stage(
            Event.SUBSCRIPTION_CHANGED,
            "gateway.subscriptions",
            "notifier: handshake, then notify matching review Task events",
            (REST, "rest", "RESTful Operation"),
            "U",
        ),
        Stage(
            Event.NOTIFICATION_ATTEMPTED,
            "gateway.subscriptions",
            "subscriber: fetch the Tasks named in the id-only notification",
            (DCM, "110106", "Export"),
            "E",
        ),
    )
}


@dataclass(frozen=True, slots=True)
class PipelineEvent:
    """One occurrence of an event, with everything the audit record must carry."""

    kind: Event
    actor: Actor
    occurred_at: datetime
    outcome: str = "0"  # AuditEvent.outcome: 0 success, 4 minor, 8 serious, 12 major failure
    outcome_desc: str = ""
    study_instance_uid: str = ""
    patient_id: str = ""
    encounter_id: str = ""
    model: ModelIdentity | None = None
    input_hash: str = ""
    thresholds: Thresholds | None = None
    rationale: str = ""
    entities: tuple[str, ...] = ()  # references the event is about, e.g. "Task/t1/_history/2"
    detail: Mapping[str, str] = field(default_factory=dict)
    request_id: str = ""
    subtype: str = ""  # restful-interaction code for REST events

    @property
    def stage(self) -> Stage:
        """This event's row of the pipeline table."""
        return PIPELINE[self.kind]
