"""Provenance for changes to clinical state (FHIR R4 provenance.html, standards.md §2.1).

The AI-created Task names the model Device as author and the gateway Device as custodian, with the
input ImagingStudy (and the hash of the exact model input) as source; a reviewer's decision names
the Practitioner from the token's `fhirUser` as verifier (approve) or author (override, reject),
with the prior Task version as revision.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from fhir_mapping import codesystems as cs
from fhir_mapping.r4 import Provenance, validate
from fhir_mapping.task import fhir_instant
from gateway.domain.model import Actor, Decision

INPUT_HASH_SYSTEM = "urn:hitl-gateway:model-input-sha256"
AI_ASSERTED_REASON = {
    "coding": [cs.coding(cs.V3_OBSERVATION_VALUE, "AIAST", "Artificial Intelligence asserted")]
}


def _participant(code: str, display: str) -> dict[str, Any]:
    return {"coding": [cs.coding(cs.PARTICIPANT_TYPE_SYSTEM, code, display)]}


def _activity(code: str) -> dict[str, Any]:
    return {"coding": [cs.coding(cs.DATA_OPERATION_SYSTEM, code, code.lower())]}


VERIFIER = _participant("verifier", "Verifier")
AUTHOR = _participant("author", "Author")
INFORMANT = _participant("informant", "Informant")
CUSTODIAN = _participant("custodian", "Custodian")


def decision_provenance(
    *,
    provenance_id: str,
    task_ref_versioned: str,
    reviewer: Actor,
    study_ref: Mapping[str, Any],
    model_device_ref: str,
    decision: Decision,
    when: datetime,
    prior_task_version_ref: str,
) -> dict[str, Any]:
    """Provenance of a reviewer's decision on a Task version (activity UPDATE)."""
    who: dict[str, Any] = {"reference": reviewer.reference}
    if reviewer.display:
        who["display"] = reviewer.display
    # Approving verifies what the model asserted; override and reject author a new assertion.
    human_type = VERIFIER if decision is Decision.APPROVE else AUTHOR
    device_type = AUTHOR if decision is Decision.APPROVE else INFORMANT
    resource: dict[str, Any] = {
        "resourceType": "Provenance",
        "id": provenance_id,
        "target": [{"reference": task_ref_versioned}],
        "occurredDateTime": fhir_instant(when),
        "recorded": fhir_instant(when),
        "activity": _activity("UPDATE"),
        "agent": [
            {"type": human_type, "who": who},
            {"type": device_type, "who": {"reference": model_device_ref}},
        ],
        "entity": [
            {"role": "source", "what": dict(study_ref)},
            {"role": "revision", "what": {"reference": prior_task_version_ref}},
        ],
    }
    return ensure_valid(resource)


def scoring_provenance(
    *,
    provenance_id: str,
    task_ref_versioned: str,
    study_ref: Mapping[str, Any],
    model_device_ref: str,
    input_hash: str,
    when: datetime,
    gateway_device_ref: str = "Device/hitl-gateway",
    prior_task_version_ref: str = "",
) -> dict[str, Any]:
    """Provenance of an AI-created (or re-scored) Task version: CREATE, or UPDATE with a prior."""
    entities: list[dict[str, Any]] = [
        {"role": "source", "what": dict(study_ref)},
        {
            "role": "source",
            "what": {
                "identifier": {"system": INPUT_HASH_SYSTEM, "value": input_hash},
                "display": "model input tensor (SHA-256)",
            },
        },
    ]
    if prior_task_version_ref:
        entities.append({"role": "revision", "what": {"reference": prior_task_version_ref}})
    resource: dict[str, Any] = {
        "resourceType": "Provenance",
        "id": provenance_id,
        "meta": {"security": [cs.coding(cs.V3_OBSERVATION_VALUE, "AIAST")]},
        "target": [{"reference": task_ref_versioned}],
        "occurredDateTime": fhir_instant(when),
        "recorded": fhir_instant(when),
        "reason": [AI_ASSERTED_REASON],
        "activity": _activity("UPDATE" if prior_task_version_ref else "CREATE"),
        "agent": [
            {"type": AUTHOR, "who": {"reference": model_device_ref}},
            {"type": CUSTODIAN, "who": {"reference": gateway_device_ref}},
        ],
        "entity": entities,
    }
    return ensure_valid(resource)


def ensure_valid(resource: dict[str, Any]) -> dict[str, Any]:
    """Return the Provenance after validating it under the R4 model (a failure is our bug)."""
    validate(Provenance, resource)
    if not resource.get("target") or not resource.get("agent"):
        raise ValueError("Provenance needs target and agent")
    return resource


def workflow_provenance(
    *,
    provenance_id: str,
    task_ref_versioned: str,
    actor_ref: str,
    activity: str,
    when: datetime,
    sources: tuple[str, ...] = (),
    prior_task_version_ref: str = "",
    gateway_device_ref: str = "Device/hitl-gateway",
) -> dict[str, Any]:
    """Provenance of a workflow change to a Task (claim, secondary review, reassignment)."""
    agents: list[dict[str, Any]] = [{"type": AUTHOR, "who": {"reference": actor_ref}}]
    if actor_ref != gateway_device_ref:
        agents.append({"type": CUSTODIAN, "who": {"reference": gateway_device_ref}})
    entities: list[dict[str, Any]] = [{"role": "source", "what": {"reference": s}} for s in sources]
    if prior_task_version_ref:
        entities.append({"role": "revision", "what": {"reference": prior_task_version_ref}})
    resource: dict[str, Any] = {
        "resourceType": "Provenance",
        "id": provenance_id,
        "target": [{"reference": task_ref_versioned}],
        "occurredDateTime": fhir_instant(when),
        "recorded": fhir_instant(when),
        "activity": _activity(activity),
        "agent": agents,
    }
    if entities:
        resource["entity"] = entities
    return ensure_valid(resource)
