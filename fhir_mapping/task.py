"""The review Task (FHIR R4 Task, workflow "fulfilment by a human"): built from a score, completed
by a decision.

FHIR R4 task.html: `status`, `intent` and `priority` have required bindings that the models do not
enforce, so `check_task` does; the review outcome lives in `Task.output` with `status = completed`.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from fhir_mapping import codesystems as cs
from fhir_mapping.r4 import Task, validate
from gateway.domain.errors import InvalidInput
from gateway.domain.model import (
    ModelIdentity,
    ReviewDecision,
    ScoreResult,
    StudyContext,
    Thresholds,
)
from gateway.domain.priority import Priority

AIAST_LABEL = {
    "system": cs.V3_OBSERVATION_VALUE,
    "code": "AIAST",
    "display": "Artificial Intelligence asserted",
}
_FHIR_ID = re.compile(r"[^A-Za-z0-9\-.]")


def fhir_instant(when: datetime) -> str:
    """An R4 instant in UTC with milliseconds, e.g. 2026-01-02T03:04:05.000Z."""
    if when.tzinfo is None:
        raise ValueError("FHIR instants need a timezone")
    return when.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_instant(text: str) -> datetime:
    """Read an R4 instant/dateTime written by `fhir_instant` (or any ISO 8601 with zone)."""
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def study_reference(study_instance_uid: str) -> dict[str, Any]:
    """Reference to the ImagingStudy, with its Study Instance UID as identifier (urn:dicom:uid)."""
    return {
        "reference": f"ImagingStudy/{study_instance_uid}",
        "type": "ImagingStudy",
        "identifier": {"system": cs.DICOM_UID_SYSTEM, "value": f"urn:oid:{study_instance_uid}"},
    }


def model_device_reference(model: ModelIdentity) -> str:
    """`Device/<name>-<version>`: the Device of one governed model version (a valid FHIR id)."""
    return f"Device/{_FHIR_ID.sub('-', f'{model.name}-{model.version}')[:64]}"


def _input(code: str, value_key: str, value: Any) -> dict[str, Any]:
    return {"type": cs.concept(cs.INPUT_TYPE_SYSTEM, code), value_key: value}


def _output(code: str, value_key: str, value: Any) -> dict[str, Any]:
    return {"type": cs.concept(cs.OUTPUT_TYPE_SYSTEM, code), value_key: value}


def review_inputs(score: ScoreResult, model_device_ref: str) -> list[dict[str, Any]]:
    """Task.input entries: what the reviewer needs and what the audit must be able to trace."""
    if score.score is None or score.model is None:
        raise ValueError("a review Task needs a score from a governed model")
    model = score.model
    return [
        _input("ai-score", "valueDecimal", score.score),
        _input("ai-label", "valueCodeableConcept", {"text": score.label}),
        _input("model", "valueReference", {"reference": model_device_ref}),
        _input("model-version", "valueString", f"{model.name}:{model.version}"),
        _input("model-sha256", "valueString", model.sha256),
        _input("input-hash", "valueString", score.input_hash),
        _input("review-threshold", "valueDecimal", score.thresholds.review),
        _input("secondary-review-threshold", "valueDecimal", score.thresholds.secondary_review),
        _input("use-case", "valueString", model.use_case),
    ]


def _business_status(code: str) -> dict[str, Any]:
    return cs.concept(cs.BUSINESS_STATUS_SYSTEM, code)


def build_review_task(
    *,
    task_id: str,
    study: StudyContext,
    score: ScoreResult,
    priority: Priority,
    authored_on: datetime,
    model_device_ref: str,
    gateway_device: str = "Device/hitl-gateway",
) -> dict[str, Any]:
    """A requested review Task for a flagged study (open: performerType reviewer, no owner)."""
    when = fhir_instant(authored_on)
    context_known = bool(study.patient_id and study.encounter_id)
    resource: dict[str, Any] = {
        "resourceType": "Task",
        "id": task_id,
        "meta": {"security": [dict(AIAST_LABEL)]},
        "status": "requested",
        "businessStatus": _business_status(
            "awaiting-review" if context_known else "context-missing"
        ),
        "intent": "order",
        "priority": Priority(priority).value,
        "code": cs.concept(cs.TASK_CODE_SYSTEM, cs.TASK_CODE),
        "focus": study_reference(study.study_instance_uid),
        "requester": {"reference": gateway_device},
        "performerType": [
            {"coding": [cs.coding(cs.PERFORMER_TYPE_SYSTEM, "reviewer", "Reviewer")]}
        ],
        "authoredOn": when,
        "lastModified": when,
        "input": review_inputs(score, model_device_ref),
    }
    if study.patient_id:
        resource["for"] = {"reference": f"Patient/{study.patient_id}", "type": "Patient"}
    if study.encounter_id:
        resource["encounter"] = {"reference": f"Encounter/{study.encounter_id}"}
    return ensure_valid(resource)


def refresh_review_task(
    resource: Mapping[str, Any],
    *,
    score: ScoreResult,
    priority: Priority,
    when: datetime,
    model_device_ref: str,
) -> dict[str, Any]:
    """The open Task with the inputs of a re-score (late instances): same Task, new content."""
    updated = copy.deepcopy(dict(resource))
    updated["input"] = review_inputs(score, model_device_ref)
    updated["priority"] = Priority(priority).value
    updated["lastModified"] = fhir_instant(when)
    return ensure_valid(updated)


def complete_task(
    resource: Mapping[str, Any], decision: ReviewDecision, when: datetime
) -> dict[str, Any]:
    """The Task completed by a reviewer: status completed, owner, typed review outputs."""
    done = copy.deepcopy(dict(resource))
    instant = fhir_instant(when)
    done["status"] = "completed"
    done["businessStatus"] = _business_status(cs.DECISION_BUSINESS_STATUS[decision.decision])
    done["owner"] = {"reference": decision.reviewer.reference}
    if decision.reviewer.display:
        done["owner"]["display"] = decision.reviewer.display
    period = dict(done.get("executionPeriod", {}))
    period.setdefault("start", instant)
    period["end"] = instant
    done["executionPeriod"] = period
    done["lastModified"] = instant
    outputs = [
        _output(
            "decision",
            "valueCodeableConcept",
            cs.concept(cs.DECISION_SYSTEM, decision.decision.value),
        ),
        _output(
            "rationale",
            "valueCodeableConcept",
            cs.concept(cs.RATIONALE_SYSTEM, decision.rationale_code),
        ),
    ]
    if decision.rationale_text:
        outputs.append(_output("rationale-text", "valueString", decision.rationale_text))
    if decision.override_priority is not None:
        outputs.append(_output("override-priority", "valueCode", decision.override_priority.value))
    done["output"] = outputs
    return ensure_valid(done)


def change_status(
    resource: Mapping[str, Any], status: str, when: datetime, owner: str = ""
) -> dict[str, Any]:
    """The Task in another (non-completing) status, e.g. claimed: accepted / in-progress."""
    changed = copy.deepcopy(dict(resource))
    changed["status"] = status
    changed["lastModified"] = fhir_instant(when)
    if owner:
        changed["owner"] = {"reference": owner}
    if status == "in-progress":
        changed.setdefault("executionPeriod", {"start": fhir_instant(when)})
    return ensure_valid(changed)


def add_relevant_history(resource: Mapping[str, Any], provenance_ref: str) -> dict[str, Any]:
    """The Task listing one more Provenance in `relevantHistory`."""
    updated = copy.deepcopy(dict(resource))
    history = list(updated.get("relevantHistory", []))
    history.append({"reference": provenance_ref})
    updated["relevantHistory"] = history
    return updated


def with_version(
    resource: Mapping[str, Any], version_id: int | str, last_updated: datetime
) -> dict[str, Any]:
    """The Task with `meta.versionId` and `meta.lastUpdated` set (security labels kept)."""
    updated = copy.deepcopy(dict(resource))
    meta = dict(updated.get("meta", {}))
    meta["versionId"] = str(version_id)
    meta["lastUpdated"] = fhir_instant(last_updated)
    updated["meta"] = meta
    return updated


def check_task(resource: Mapping[str, Any]) -> None:
    """Raise InvalidInput unless the Task is valid R4 with status/intent/priority in their sets."""
    if resource.get("resourceType") != "Task":
        raise InvalidInput("resource is not a Task", code="invalid")
    status = resource.get("status")
    if status not in cs.TASK_STATUSES:
        raise InvalidInput(f"Task.status {status!r} is not in task-status", code="code-invalid")
    intent = resource.get("intent")
    if intent not in cs.TASK_INTENTS:
        raise InvalidInput(f"Task.intent {intent!r} is not in task-intent", code="code-invalid")
    priority = resource.get("priority")
    if priority is not None and priority not in {p.value for p in Priority}:
        raise InvalidInput(
            f"Task.priority {priority!r} is not in request-priority", code="code-invalid"
        )
    try:
        validate(Task, resource)
    except ValidationError as exc:
        raise InvalidInput(f"not a valid R4 Task: {_first_error(exc)}", code="structure") from exc
    authored, modified = resource.get("authoredOn"), resource.get("lastModified")
    # inv-1 compares instants, so compare parsed values rather than strings.
    if (
        isinstance(authored, str)
        and isinstance(modified, str)
        and parse_instant(modified) < parse_instant(authored)
    ):
        raise InvalidInput("Task.lastModified precedes authoredOn (inv-1)", code="invariant")


def ensure_valid(resource: dict[str, Any]) -> dict[str, Any]:
    """Return the Task we built, or fail loudly: an invalid Task of our own making is a bug."""
    try:
        check_task(resource)
    except InvalidInput as exc:
        raise ValueError(f"built an invalid Task: {exc.message}") from exc
    return resource


def _first_error(exc: ValidationError) -> str:
    errors = exc.errors()
    if not errors:
        return "invalid"
    first = errors[0]
    where = ".".join(str(p) for p in first.get("loc", ()))
    return f"{where}: {first.get('msg', '')}"


@dataclass(frozen=True, slots=True)
class TaskFacts:
    """What audit, Provenance and the worklist need to know about a review Task."""

    task_id: str
    status: str
    priority: Priority
    study_instance_uid: str
    patient_id: str
    encounter_id: str
    use_case: str
    model: ModelIdentity | None
    model_device_ref: str
    input_hash: str
    thresholds: Thresholds | None
    owner: str


def _ref_id(resource: Mapping[str, Any], element: str, prefix: str) -> str:
    ref = resource.get(element)
    if isinstance(ref, Mapping):
        text = ref.get("reference")
        if isinstance(text, str) and text.startswith(prefix + "/"):
            return text.split("/", 1)[1]
    return ""


def _inputs(resource: Mapping[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for entry in resource.get("input", []):
        for c in entry.get("type", {}).get("coding", []):
            if c.get("system") == cs.INPUT_TYPE_SYSTEM:
                value_key = next((k for k in entry if k.startswith("value")), "")
                found[c.get("code", "")] = entry.get(value_key)
    return found


def task_facts(resource: Mapping[str, Any]) -> TaskFacts:
    """Read the facts back from a stored review Task."""
    inputs = _inputs(resource)
    model: ModelIdentity | None = None
    name_version = inputs.get("model-version")
    use_case = str(inputs.get("use-case") or "")
    if isinstance(name_version, str) and ":" in name_version:
        name, version = name_version.rsplit(":", 1)
        sha256 = str(inputs.get("model-sha256") or "")
        extra = {"use_case": use_case} if use_case else {}
        model = ModelIdentity(name=name, version=version, sha256=sha256, **extra)
    thresholds: Thresholds | None = None
    if "review-threshold" in inputs and "secondary-review-threshold" in inputs:
        thresholds = Thresholds(
            review=float(inputs["review-threshold"]),
            secondary_review=float(inputs["secondary-review-threshold"]),
        )
    focus = resource.get("focus", {})
    uid = str(focus.get("identifier", {}).get("value", "")).removeprefix("urn:oid:")
    device = inputs.get("model")
    owner = resource.get("owner", {})
    return TaskFacts(
        task_id=str(resource.get("id", "")),
        status=str(resource.get("status", "")),
        priority=Priority(resource.get("priority", Priority.ROUTINE.value)),
        study_instance_uid=uid,
        patient_id=_ref_id(resource, "for", "Patient"),
        encounter_id=_ref_id(resource, "encounter", "Encounter"),
        use_case=use_case,
        model=model,
        model_device_ref=str(device.get("reference", "")) if isinstance(device, Mapping) else "",
        input_hash=str(inputs.get("input-hash") or ""),
        thresholds=thresholds,
        owner=str(owner.get("reference", "")) if isinstance(owner, Mapping) else "",
    )
