"""Builders shared by the audit tests."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from gateway.domain.model import Actor, ModelIdentity, Thresholds
from gateway.pipeline import Event, PipelineEvent

REVIEWER = Actor(
    reference="Practitioner/dr-a",
    roles=("reviewer",),
    display="Dr A",
    token_id="jti-123",
    network_address="127.0.0.1",
)
GATEWAY = Actor(reference="Device/hitl-gateway")
MODEL = ModelIdentity(name="cxr-ptx", version="7", sha256="ab" * 32)
THRESHOLDS = Thresholds(review=0.8, secondary_review=0.95)


def decision_event(patient_id: str = "pat-1", **changes: Any) -> PipelineEvent:
    """A reviewer's decision with every element the audit record can carry."""
    values: dict[str, Any] = {
        "kind": Event.DECISION_RECORDED,
        "actor": REVIEWER,
        "occurred_at": datetime(2025, 3, 1, 12, 30, tzinfo=UTC),
        "study_instance_uid": "1.2.826.0.1.3680043.8.498.1",
        "patient_id": patient_id,
        "encounter_id": "enc-1",
        "model": MODEL,
        "input_hash": "cd" * 32,
        "thresholds": THRESHOLDS,
        "rationale": "finding-confirmed",
        "entities": ("Task/t-1/_history/2",),
        "detail": {"decision": "approve"},
        "request_id": "req-42",
        "subtype": "update",
    }
    values.update(changes)
    return PipelineEvent(**values)


def scored_event(patient_id: str = "pat-1") -> PipelineEvent:
    """A system event: the gateway scored a study."""
    return PipelineEvent(
        kind=Event.STUDY_SCORED,
        actor=GATEWAY,
        occurred_at=datetime.now(UTC),
        study_instance_uid="1.2.3.4",
        patient_id=patient_id,
        model=MODEL,
        input_hash="ef" * 32,
        thresholds=THRESHOLDS,
    )


def provenance(task_id: str = "t-1") -> dict[str, Any]:
    """A minimal AI-scoring Provenance."""
    return {
        "resourceType": "Provenance",
        "target": [{"reference": f"Task/{task_id}/_history/1"}],
        "recorded": "2025-03-01T12:00:00Z",
        "agent": [{"who": {"reference": "Device/cxr-ptx-7"}}],
        "entity": [
            {
                "role": "source",
                "what": {"identifier": {"system": "urn:dicom:uid", "value": "urn:oid:1.2.3.4"}},
            }
        ],
    }
