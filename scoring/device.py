"""FHIR R4 Device of a governed model version and the Provenance of its promotion or rollback.

The Device id is the one review Tasks and scoring Provenance already reference
(`fhir_mapping.task.model_device_reference`), so an auditor follows a Task straight to the exact
model version, its ONNX SHA-256 and the humans who approved it.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from fhir_mapping import codesystems as cs
from fhir_mapping.r4 import Device, Provenance, to_json, validate
from fhir_mapping.task import fhir_instant, model_device_reference
from gateway.domain.model import ModelIdentity

ONNX_SHA256_SYSTEM = "urn:hitl-gateway:model-onnx-sha256"
REGISTRY_SYSTEM = "urn:hitl-gateway:mlflow-registered-model"


def device_id(model: ModelIdentity) -> str:
    """The Device id of a model version (without the `Device/` prefix)."""
    return model_device_reference(model).removeprefix("Device/")


def model_device(model: ModelIdentity, *, active: bool, tracking_uri: str) -> dict[str, Any]:
    """The Device resource of one registered version (R4 device.html)."""
    resource: dict[str, Any] = {
        "resourceType": "Device",
        "id": device_id(model),
        "identifier": [
            {"system": ONNX_SHA256_SYSTEM, "value": model.sha256},
            {"system": REGISTRY_SYSTEM, "value": f"{model.name}/{model.version}"},
        ],
        "status": "active" if active else "inactive",
        "deviceName": [{"name": model.name, "type": "model-name"}],
        "modelNumber": model.name,
        "type": {"text": f"AI triage model (ONNX), use case {model.use_case}"},
        "version": [{"type": {"text": "registry version"}, "value": model.version}],
        "note": [{"text": f"Served from the model registry {tracking_uri}"}],
    }
    return to_json(validate(Device, resource))


def _agent(code: str, display: str, reference: str) -> dict[str, Any]:
    return {
        "type": {"coding": [cs.coding(cs.PARTICIPANT_TYPE_SYSTEM, code, display)]},
        "who": {"reference": reference},
    }


def governance_provenance(
    *,
    provenance_id: str,
    model: ModelIdentity,
    actor: str,
    approvers: Sequence[str],
    replaced: ModelIdentity | None,
    when: datetime,
    reason: str,
) -> dict[str, Any]:
    """Provenance of moving the serving alias to `model`: approvers verify, the actor authors."""
    agents = [_agent("verifier", "Verifier", who) for who in approvers]
    agents.append(_agent("author", "Author", actor))
    resource: dict[str, Any] = {
        "resourceType": "Provenance",
        "id": provenance_id,
        "target": [{"reference": model_device_reference(model)}],
        "recorded": fhir_instant(when),
        "occurredDateTime": fhir_instant(when),
        "activity": {"coding": [cs.coding(cs.DATA_OPERATION_SYSTEM, "UPDATE", "update")]},
        "reason": [{"text": reason}],
        "agent": agents,
    }
    if replaced is not None:
        resource["entity"] = [
            {"role": "revision", "what": {"reference": model_device_reference(replaced)}}
        ]
    return to_json(validate(Provenance, resource))
