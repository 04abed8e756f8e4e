"""The gateway's published CodeSystems, as data and as FHIR R4 CodeSystem resources.

Review outputs are typed with `review-output-type`, decisions come from `review-decision` and
rationales from `review-rationale`; each rationale states which decisions it may justify and whether
free text is required. These tables are the single source of those rules.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gateway.domain.model import Decision

BASE = "http://hitl-gateway.org/fhir/CodeSystem"
DECISION_SYSTEM = f"{BASE}/review-decision"
RATIONALE_SYSTEM = f"{BASE}/review-rationale"
OUTPUT_TYPE_SYSTEM = f"{BASE}/review-output-type"
INPUT_TYPE_SYSTEM = f"{BASE}/review-input-type"
TASK_CODE_SYSTEM = f"{BASE}/review-task-code"
BUSINESS_STATUS_SYSTEM = f"{BASE}/review-business-status"
REVIEW_POOL_SYSTEM = f"{BASE}/review-pool"

TASK_STATUS_SYSTEM = "http://hl7.org/fhir/task-status"
PRIORITY_SYSTEM = "http://hl7.org/fhir/request-priority"
PERFORMER_TYPE_SYSTEM = "http://terminology.hl7.org/CodeSystem/task-performer-type"
V3_OBSERVATION_VALUE = "http://terminology.hl7.org/CodeSystem/v3-ObservationValue"
DATA_OPERATION_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-DataOperation"
PARTICIPANT_TYPE_SYSTEM = "http://terminology.hl7.org/CodeSystem/provenance-participant-type"
DICOM_UID_SYSTEM = "urn:dicom:uid"

TASK_CODE = "ai-finding-review"

# FHIR R4 task-intent value set: `unknown` plus request-intent (never `directive`).
TASK_INTENTS: frozenset[str] = frozenset(
    {
        "unknown",
        "proposal",
        "plan",
        "order",
        "original-order",
        "reflex-order",
        "filler-order",
        "instance-order",
        "option",
    }
)
# FHIR R4 task-status value set.
TASK_STATUSES: frozenset[str] = frozenset(
    {
        "draft",
        "requested",
        "received",
        "accepted",
        "rejected",
        "ready",
        "cancelled",
        "in-progress",
        "on-hold",
        "failed",
        "completed",
        "entered-in-error",
    }
)


@dataclass(frozen=True, slots=True)
class Concept:
    """One code of a published CodeSystem."""

    code: str
    display: str
    definition: str


@dataclass(frozen=True, slots=True)
class Rationale:
    """A rationale code, the decisions it may justify and whether free text must accompany it."""

    code: str
    display: str
    definition: str
    decisions: frozenset[Decision]
    text_required: bool = False


_ALL = frozenset(Decision)
_A, _O, _R = Decision.APPROVE, Decision.OVERRIDE, Decision.REJECT

DECISIONS: Mapping[Decision, Concept] = {
    _A: Concept("approve", "Approve", "The AI flag is right; escalate as flagged."),
    _O: Concept("override", "Override", "The reviewer sets the priority and finding, either way."),
    _R: Concept("reject", "Reject", "The AI flag is wrong; no escalation."),
}

RATIONALES: Mapping[str, Rationale] = {
    r.code: r
    for r in (
        Rationale("finding-confirmed", "Finding confirmed", "The image shows the flagged finding.",
                  frozenset({_A})),
        Rationale("clinical-context", "Clinical context", "Clinical context decides the priority.",
                  _ALL),
        Rationale("priority-too-low", "Priority too low", "The finding needs a higher priority.",
                  frozenset({_O})),
        Rationale("priority-too-high", "Priority too high", "The finding needs a lower priority.",
                  frozenset({_O})),
        Rationale("different-finding", "Different finding", "The image shows another finding.",
                  frozenset({_O, _R})),
        Rationale("no-finding", "No finding", "The image shows no actionable finding.",
                  frozenset({_O, _R})),
        Rationale("artifact", "Artifact", "The flag comes from an artifact, device or line.",
                  frozenset({_R})),
        Rationale("prior-known", "Known from prior", "The finding is known and already managed.",
                  frozenset({_O, _R})),
        Rationale("poor-image-quality", "Poor image quality", "The image cannot support the flag.",
                  frozenset({_O, _R})),
        Rationale("other", "Other", "Another reason, stated in free text.", _ALL,
                  text_required=True),
    )
}  # fmt: skip

OUTPUT_TYPES: Mapping[str, Concept] = {
    c.code: c
    for c in (
        Concept("decision", "Decision", "The reviewer's decision (review-decision)."),
        Concept("rationale", "Rationale", "The coded rationale (review-rationale)."),
        Concept("rationale-text", "Rationale text", "Free text accompanying the rationale."),
        Concept("override-priority", "Override priority", "The priority set by an override."),
    )
}

INPUT_TYPES: Mapping[str, Concept] = {
    c.code: c
    for c in (
        Concept("ai-score", "AI score", "Model output score between 0 and 1."),
        Concept("ai-label", "AI label", "The finding the model looks for."),
        Concept("model", "Model device", "The Device of the governed model version."),
        Concept("model-version", "Model version", "Registered model as name:version."),
        Concept("model-sha256", "Model SHA-256", "SHA-256 of the served ONNX file."),
        Concept("input-hash", "Input hash", "SHA-256 of the exact tensor the model received."),
        Concept("review-threshold", "Review threshold", "Score at or above which review is asked."),
        Concept("secondary-review-threshold", "Secondary review threshold",
                "Score at or above which a rejected flag goes to a secondary reviewer."),
        Concept("use-case", "Use case", "The routed use case, e.g. cxr-pneumothorax."),
        Concept("first-reviewer", "First reviewer",
                "The reviewer whose reject a secondary review re-examines."),
        Concept("first-decision", "First decision",
                "The first reviewer's decision and rationale, for the secondary reviewer."),
    )
}  # fmt: skip

TASK_CODES: Mapping[str, Concept] = {
    TASK_CODE: Concept(TASK_CODE, "AI finding review", "Review of an AI-flagged imaging finding.")
}

BUSINESS_STATUSES: Mapping[str, Concept] = {
    c.code: c
    for c in (
        Concept("awaiting-review", "Awaiting review", "The flag waits for a reviewer."),
        Concept("context-missing", "Context missing",
                "Patient or encounter is unknown; no downstream action until it is found."),
        Concept("approved", "Approved", "The reviewer approved the flag."),
        Concept("overridden", "Overridden", "The reviewer set the priority and finding."),
        Concept("rejected", "Rejected", "The reviewer rejected the flag."),
        Concept("secondary-review", "Secondary review",
                "A high-confidence flag was rejected; a second reviewer decides."),
        Concept("reassigned-overdue", "Reassigned (overdue)",
                "The deadline passed; the Task went to the backup pool (counted as abandoned)."),
        Concept("escalated-by-reviewer", "Escalated by reviewer",
                "A reviewer asked for review of a study the model did not flag."),
    )
}  # fmt: skip

REVIEW_POOLS: Mapping[str, Concept] = {
    c.code: c
    for c in (
        Concept("reviewer", "Reviewer pool", "Reviewers of AI flags (role reviewer)."),
        Concept("secondary-reviewer", "Secondary reviewer pool",
                "Second reviewers of rejected high-confidence flags (role secondary-reviewer)."),
        Concept("backup-reviewer", "Backup reviewer pool",
                "Reviewers who take over Tasks past their deadline (role reviewer)."),
    )
}  # fmt: skip

DECISION_BUSINESS_STATUS: Mapping[Decision, str] = {
    _A: "approved",
    _O: "overridden",
    _R: "rejected",
}


def coding(system: str, code: str, display: str = "") -> dict[str, str]:
    """A Coding; display only when known."""
    out = {"system": system, "code": code}
    if display:
        out["display"] = display
    return out


def concept(system: str, code: str) -> dict[str, Any]:
    """A CodeableConcept with one Coding of a gateway CodeSystem (display filled in)."""
    table = _TABLES[system][1]
    item = table.get(code)
    display = item.display if item is not None else ""
    return {"coding": [coding(system, code, display)]}


_DecisionConcepts: Mapping[str, Concept] = {d.value: c for d, c in DECISIONS.items()}

_TABLES: Mapping[str, tuple[str, Mapping[str, Concept] | Mapping[str, Rationale]]] = {
    DECISION_SYSTEM: ("review-decision", _DecisionConcepts),
    RATIONALE_SYSTEM: ("review-rationale", RATIONALES),
    OUTPUT_TYPE_SYSTEM: ("review-output-type", OUTPUT_TYPES),
    INPUT_TYPE_SYSTEM: ("review-input-type", INPUT_TYPES),
    TASK_CODE_SYSTEM: ("review-task-code", TASK_CODES),
    BUSINESS_STATUS_SYSTEM: ("review-business-status", BUSINESS_STATUSES),
    REVIEW_POOL_SYSTEM: ("review-pool", REVIEW_POOLS),
}


def code_system_resource(system: str) -> dict[str, Any]:
    """The FHIR R4 CodeSystem resource of one gateway CodeSystem (complete content)."""
    resource_id, table = _TABLES[system]
    concepts: list[dict[str, Any]] = []
    for item in table.values():
        entry: dict[str, Any] = {
            "code": item.code,
            "display": item.display,
            "definition": item.definition,
        }
        if isinstance(item, Rationale):
            entry["property"] = [
                *({"code": "decision", "valueCode": d.value} for d in sorted(item.decisions)),
                {"code": "text-required", "valueBoolean": item.text_required},
            ]
        concepts.append(entry)
    resource: dict[str, Any] = {
        "resourceType": "CodeSystem",
        "id": resource_id,
        "url": system,
        "version": "1.0.0",
        "name": "".join(part.capitalize() for part in resource_id.split("-")),
        "title": resource_id.replace("-", " ").capitalize(),
        "status": "active",
        "experimental": False,
        "publisher": "hitl-gateway",
        "caseSensitive": True,
        "content": "complete",
        "count": len(concepts),
        "concept": concepts,
    }
    if system == RATIONALE_SYSTEM:
        resource["property"] = [
            {"code": "decision", "type": "code",
             "description": "A decision (review-decision) this rationale may justify."},
            {"code": "text-required", "type": "boolean",
             "description": "Free text (output rationale-text) must accompany this rationale."},
        ]  # fmt: skip
    return resource


def all_code_systems() -> list[dict[str, Any]]:
    """Every published gateway CodeSystem as an R4 resource."""
    return [code_system_resource(system) for system in _TABLES]


def code_system_by_id(resource_id: str) -> dict[str, Any] | None:
    """One published CodeSystem by its resource id, or None."""
    for system, (rid, _) in _TABLES.items():
        if rid == resource_id:
            return code_system_resource(system)
    return None
