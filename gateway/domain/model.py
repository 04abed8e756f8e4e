"""Domain value objects shared by ingest, scoring, review, worklist and audit."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from gateway.domain.priority import Priority


class StudyState(enum.StrEnum):
    """Study lifecycle (see `gateway.domain.study_lifecycle.STUDY_TRANSITIONS`)."""

    RECEIVING = "receiving"
    SCORING = "scoring"
    SCORED = "scored"
    STANDARD_TRIAGE = "standard-triage"
    UNROUTED = "unrouted"


class Decision(enum.StrEnum):
    """A reviewer's decision on an AI flag (gateway decision CodeSystem)."""

    APPROVE = "approve"
    OVERRIDE = "override"
    REJECT = "reject"


@dataclass(frozen=True, slots=True)
class Actor:
    """Who acts: a person from the token (`fhirUser`) or a system principal."""

    reference: str  # e.g. "Practitioner/123" or "Device/hitl-gateway"
    roles: tuple[str, ...] = ()
    display: str = ""
    token_id: str = ""
    network_address: str = ""


@dataclass(frozen=True, slots=True)
class StoredInstance:
    """One DICOM instance durably spooled and recorded."""

    sop_instance_uid: str
    sop_class_uid: str
    study_instance_uid: str
    series_instance_uid: str
    transfer_syntax_uid: str
    path: str
    size: int
    sha256: str
    modality: str
    patient_id: str
    patient_name: str
    accession_number: str
    calling_ae: str
    received_at: datetime


@dataclass(frozen=True, slots=True)
class StudyContext:
    """What the downstream actions need to know about a study."""

    study_instance_uid: str
    patient_id: str
    patient_name: str
    accession_number: str
    modality: str
    encounter_id: str = ""
    instance_paths: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ModelIdentity:
    """The governed model version that produced a score."""

    name: str
    version: str
    sha256: str
    use_case: str = "cxr-pneumothorax"


@dataclass(frozen=True, slots=True)
class Thresholds:
    """Thresholds in force when a study was scored."""

    review: float
    secondary_review: float

    def as_dict(self) -> dict[str, float]:
        """Plain mapping for records."""
        return {"review": self.review, "secondary_review": self.secondary_review}


@dataclass(frozen=True, slots=True)
class ScoreResult:
    """Outcome of scoring one study: a score from a governed model, or standard triage."""

    study_instance_uid: str
    thresholds: Thresholds
    input_hash: str
    score: float | None = None
    model: ModelIdentity | None = None
    fallback_reason: str = ""
    label: str = "pneumothorax"

    @property
    def is_fallback(self) -> bool:
        """True when the study keeps standard triage."""
        return self.score is None

    @property
    def needs_review(self) -> bool:
        """True when the score is at or above the review threshold."""
        return self.score is not None and self.score >= self.thresholds.review


@dataclass(frozen=True, slots=True)
class ReviewDecision:
    """A reviewer's completed review of a Task."""

    decision: Decision
    rationale_code: str
    reviewer: Actor
    rationale_text: str = ""
    override_priority: Priority | None = None
    extra: Mapping[str, str] = field(default_factory=dict)
