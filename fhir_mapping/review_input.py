"""FHIR input → domain command: a reviewer's PUT of a Task becomes a `ReviewCommand`.

FHIR R4 http.html#update: the body is the whole resource and its id must equal the URL's id. The
gateway owns every element except `status` and the review `output` entries, so only those are read;
everything else in the body is ignored and the stored Task is rebuilt from the current version.
Malformed input is InvalidInput (400); a well-formed update that breaks a review rule (missing
decision, rationale, free text or override priority; a code outside the published CodeSystems) is
IncompleteAction (422).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fhir_mapping import codesystems as cs
from fhir_mapping.task import check_task
from gateway.domain.errors import IncompleteAction, InvalidInput
from gateway.domain.model import Decision
from gateway.domain.priority import Priority
from gateway.domain.task_states import TaskStatus


@dataclass(frozen=True, slots=True)
class ReviewCommand:
    """What a reviewer asked for in one Task update."""

    requested_status: TaskStatus
    decision: Decision | None = None
    rationale_code: str = ""
    rationale_text: str = ""
    override_priority: Priority | None = None


def _outputs(body: Mapping[str, Any]) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = {}
    for entry in body.get("output", []):
        for c in entry.get("type", {}).get("coding", []):
            if c.get("system") == cs.OUTPUT_TYPE_SYSTEM and c.get("code") in cs.OUTPUT_TYPES:
                found.setdefault(str(c["code"]), []).append(entry)
    return found


def _single(outputs: dict[str, list[dict[str, Any]]], code: str) -> dict[str, Any] | None:
    entries = outputs.get(code, [])
    if len(entries) > 1:
        raise IncompleteAction(f"Task.output '{code}' appears more than once", code="business-rule")
    return entries[0] if entries else None


def _code_from(entry: Mapping[str, Any] | None, system: str, what: str) -> str:
    if entry is None:
        return ""
    concept = entry.get("valueCodeableConcept")
    if not isinstance(concept, Mapping):
        raise IncompleteAction(f"Task.output '{what}' needs valueCodeableConcept", code="value")
    codes = [c.get("code", "") for c in concept.get("coding", []) if c.get("system") == system]
    if len(codes) != 1 or not codes[0]:
        raise IncompleteAction(
            f"Task.output '{what}' needs exactly one code from {system}", code="code-invalid"
        )
    return str(codes[0])


def _text_from(entry: Mapping[str, Any] | None) -> str:
    if entry is None:
        return ""
    value = entry.get("valueString", entry.get("valueMarkdown"))
    if not isinstance(value, str):
        raise IncompleteAction("Task.output 'rationale-text' needs valueString", code="value")
    return value.strip()


def _priority_from(entry: Mapping[str, Any] | None) -> Priority | None:
    if entry is None:
        return None
    value = entry.get("valueCode")
    concept = entry.get("valueCodeableConcept")
    if value is None and isinstance(concept, Mapping):
        codes = [
            c.get("code")
            for c in concept.get("coding", [])
            if c.get("system") == cs.PRIORITY_SYSTEM
        ]
        value = codes[0] if len(codes) == 1 else None
    try:
        return Priority(str(value))
    except ValueError:
        raise IncompleteAction(
            "Task.output 'override-priority' must be a request-priority code "
            "(routine | urgent | asap | stat)",
            code="code-invalid",
        ) from None


def parse_task_update(body: Any, current: Mapping[str, Any]) -> ReviewCommand:
    """Turn a PUT body into a ReviewCommand; InvalidInput (400) or IncompleteAction (422)."""
    if not isinstance(body, Mapping) or body.get("resourceType") != "Task":
        raise InvalidInput("the body must be a FHIR Task resource", code="invalid")
    if body.get("id") != current.get("id"):
        raise InvalidInput("the Task id in the body must equal the id in the URL", code="invalid")
    check_task(body)
    status = TaskStatus(body["status"]) if body["status"] in set(TaskStatus) else None
    if status is None:
        raise IncompleteAction(
            f"Task.status '{body['status']}' is not used by the review workflow",
            code="business-rule",
        )
    if status is not TaskStatus.COMPLETED:
        return ReviewCommand(requested_status=status)
    return _review_command(body)


def _review_command(body: Mapping[str, Any]) -> ReviewCommand:
    outputs = _outputs(body)
    decision_code = _code_from(_single(outputs, "decision"), cs.DECISION_SYSTEM, "decision")
    if not decision_code:
        raise IncompleteAction("a completed review needs Task.output 'decision'", code="required")
    try:
        decision = Decision(decision_code)
    except ValueError:
        raise IncompleteAction(
            f"decision '{decision_code}' is not in {cs.DECISION_SYSTEM}", code="code-invalid"
        ) from None
    rationale_code = _code_from(_single(outputs, "rationale"), cs.RATIONALE_SYSTEM, "rationale")
    if not rationale_code:
        raise IncompleteAction(
            "a completed review needs a coded Task.output 'rationale'", code="required"
        )
    rationale = cs.RATIONALES.get(rationale_code)
    if rationale is None:
        raise IncompleteAction(
            f"rationale '{rationale_code}' is not in {cs.RATIONALE_SYSTEM}", code="code-invalid"
        )
    if decision not in rationale.decisions:
        raise IncompleteAction(
            f"rationale '{rationale_code}' cannot justify decision '{decision}'",
            code="business-rule",
        )
    text = _text_from(_single(outputs, "rationale-text"))
    if rationale.text_required and not text:
        raise IncompleteAction(
            f"rationale '{rationale_code}' needs free text in Task.output 'rationale-text'",
            code="required",
        )
    override = _priority_from(_single(outputs, "override-priority"))
    if decision is Decision.OVERRIDE and override is None:
        raise IncompleteAction("an override needs Task.output 'override-priority'", code="required")
    if decision is not Decision.OVERRIDE and override is not None:
        raise IncompleteAction(
            "only an override may set Task.output 'override-priority'", code="business-rule"
        )
    return ReviewCommand(
        requested_status=TaskStatus.COMPLETED,
        decision=decision,
        rationale_code=rationale_code,
        rationale_text=text,
        override_priority=override,
    )
