"""AuditEvents for the trail's own upkeep: checkpoints, key rotation, holds, purges, exports.

DCM 110100 Application Activity for upkeep, DCM 110106 Export for packages leaving the gateway
(PS3.15 A.5.3). What was done travels as `entity.detail` under `audit-activity`, like the
pipeline events' `pipeline-event`, so auditors and the export search one key.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from fhir_mapping import r4
from fhir_mapping.audit_event import DCM, ENTITY_TYPE, OBJECT_ROLE, SOURCE_TYPE
from gateway.domain.model import Actor

DETAIL_ACTIVITY = "audit-activity"
APPLICATION_ACTIVITY = {"system": DCM, "code": "110100", "display": "Application Activity"}
EXPORT = {"system": DCM, "code": "110106", "display": "Export"}
SYSTEM_ACTOR = Actor(reference="Device/hitl-gateway", display="hitl-gateway")


def activity_event(
    activity: str,
    *,
    actor: Actor = SYSTEM_ACTOR,
    action: str = "E",
    when: datetime | None = None,
    detail: Mapping[str, str] | None = None,
    patient_id: str = "",
    export: bool = False,
    observer: str = "hitl-gateway",
) -> dict[str, Any]:
    """A validated AuditEvent recording one upkeep activity of the audit trail."""
    moment = (when or datetime.now(UTC)).astimezone(UTC)
    agent: dict[str, Any] = {
        "type": {"coding": [{"system": DCM, "code": "110150", "display": "Application"}]}
        if actor.reference.startswith("Device/")
        else {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                    "code": "AUT",
                    "display": "author",
                }
            ]
        },
        "who": {"reference": actor.reference},
        "requestor": True,
    }
    if actor.display:
        agent["name"] = actor.display
    if actor.token_id:
        agent["policy"] = [actor.token_id]
    entities: list[dict[str, Any]] = []
    if patient_id:
        entities.append(
            {
                "what": {"reference": f"Patient/{patient_id}"},
                "type": {"system": ENTITY_TYPE, "code": "1", "display": "Person"},
                "role": {"system": OBJECT_ROLE, "code": "1", "display": "Patient"},
            }
        )
    details = [{"type": DETAIL_ACTIVITY, "valueString": activity}]
    details += [{"type": k, "valueString": v} for k, v in (detail or {}).items() if v]
    entities.append(
        {
            "type": {"system": ENTITY_TYPE, "code": "2", "display": "System Object"},
            "role": {"system": OBJECT_ROLE, "code": "20", "display": "Job"},
            "description": f"audit trail {activity}",
            "detail": details,
        }
    )
    resource = {
        "resourceType": "AuditEvent",
        "type": EXPORT if export else APPLICATION_ACTIVITY,
        "action": action,
        "recorded": moment.isoformat(),
        "outcome": "0",
        "agent": [agent],
        "source": {
            "observer": {"reference": f"Device/{observer}"},
            "type": [{"system": SOURCE_TYPE, "code": "4", "display": "Application Server"}],
        },
        "entity": entities,
    }
    return r4.to_json(r4.validate(r4.AuditEvent, resource))
