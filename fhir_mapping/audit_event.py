"""Pipeline event → FHIR R4 AuditEvent (pure; no I/O).

Code systems used (all standard; no project-defined codes):

- `http://dicom.nema.org/resources/ontology/DCM` (DCM, PS3.16): event types 110100 Application
  Activity, 110104 DICOM Instances Transferred, 110109 Order Record, 110114 User Authentication
  (from the pipeline table); agent types 110150 Application, 110152 Destination Role ID,
  110153 Source Role ID.
- `http://terminology.hl7.org/CodeSystem/audit-event-type`: `rest` for RESTful operations
  (IHE BALP).
- `http://hl7.org/fhir/restful-interaction`: `AuditEvent.subtype` of REST events (BALP: create,
  read, update, delete, search-type, ...).
- `http://terminology.hl7.org/CodeSystem/v3-ParticipationType`: person agent types AUT (author)
  and IRCP (information recipient), as BALP assigns them per action.
- `http://terminology.hl7.org/CodeSystem/audit-entity-type`: 1 Person, 2 System Object.
- `http://terminology.hl7.org/CodeSystem/object-role`: 1 Patient, 3 Report (a DICOM study, as in
  PS3.15 A.5.3), 4 Domain Resource.
- `http://terminology.hl7.org/CodeSystem/security-source-type`: 4 Application Server.
- `https://profiles.ihe.net/ITI/BALP/CodeSystem/BasicAuditEntityType`: XrequestId (transaction).

Everything the event knows about the state change (model name/version/SHA-256, input hash,
thresholds, rationale, free-form detail) travels as `entity.detail` (type string + valueString) on
one carrier entity: the study when there is one, else the first data entity, else an entity that
describes the pipeline event itself. `details_of()` reads them back from any entity.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator, Mapping
from datetime import UTC
from typing import Any

from fhir_mapping import r4
from gateway.pipeline import REST, PipelineEvent

DCM = "http://dicom.nema.org/resources/ontology/DCM"
RESTFUL_INTERACTION = "http://hl7.org/fhir/restful-interaction"
PARTICIPATION_TYPE = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
ENTITY_TYPE = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
OBJECT_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"
SOURCE_TYPE = "http://terminology.hl7.org/CodeSystem/security-source-type"
BALP_ENTITY_TYPE = "https://profiles.ihe.net/ITI/BALP/CodeSystem/BasicAuditEntityType"
DICOM_UID_SYSTEM = "urn:dicom:uid"  # FHIR R4 ImagingStudy.identifier for the Study Instance UID

ACTIONS = frozenset({"C", "R", "U", "D", "E"})  # required binding audit-event-action
OUTCOMES = frozenset({"0", "4", "8", "12"})  # required binding audit-event-outcome

# BALP: the interaction a REST event stands for when the caller did not name one.
_DEFAULT_INTERACTION = {
    "C": "create",
    "R": "read",
    "U": "update",
    "D": "delete",
    "E": "search-type",
}

_PERSON = {"system": ENTITY_TYPE, "code": "1", "display": "Person"}
_SYSTEM_OBJECT = {"system": ENTITY_TYPE, "code": "2", "display": "System Object"}
_ROLE_PATIENT = {"system": OBJECT_ROLE, "code": "1", "display": "Patient"}
_ROLE_REPORT = {"system": OBJECT_ROLE, "code": "3", "display": "Report"}
_ROLE_DOMAIN_RESOURCE = {"system": OBJECT_ROLE, "code": "4", "display": "Domain Resource"}

# Detail keys, stable because auditors and the export search for them.
DETAIL_EVENT = "pipeline-event"
DETAIL_MODEL_NAME = "model-name"
DETAIL_MODEL_VERSION = "model-version"
DETAIL_MODEL_SHA256 = "model-sha256"
DETAIL_USE_CASE = "use-case"
DETAIL_INPUT_HASH = "input-hash"
DETAIL_THRESHOLD_REVIEW = "threshold-review"
DETAIL_THRESHOLD_SECONDARY = "threshold-secondary-review"
DETAIL_RATIONALE = "rationale"


def audit_event_for(event: PipelineEvent, *, record_id: str, observer: str) -> dict[str, Any]:
    """Build the validated R4 AuditEvent JSON that records one pipeline event."""
    stage = event.stage
    if stage.action not in ACTIONS:
        raise ValueError(f"AuditEvent.action {stage.action!r} is not in audit-event-action")
    if event.outcome not in OUTCOMES:
        raise ValueError(f"AuditEvent.outcome {event.outcome!r} is not in audit-event-outcome")
    if event.occurred_at.tzinfo is None:
        raise ValueError("PipelineEvent.occurred_at must carry a time zone (instant)")
    system, code, display = stage.audit_type
    is_rest = system == REST and code == "rest"
    resource: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "id": record_id,
        "type": {"system": system, "code": code, "display": display},
        "action": stage.action,
        "recorded": event.occurred_at.astimezone(UTC).isoformat(),
        "outcome": event.outcome,
        "agent": _agents(event, observer, is_rest),
        "source": {
            "observer": {"reference": f"Device/{observer}"},
            "type": [{"system": SOURCE_TYPE, "code": "4", "display": "Application Server"}],
        },
        "entity": _entities(event),
    }
    if event.outcome_desc:
        resource["outcomeDesc"] = event.outcome_desc
    interaction = event.subtype or (_DEFAULT_INTERACTION[stage.action] if is_rest else "")
    if interaction:
        resource["subtype"] = [{"system": RESTFUL_INTERACTION, "code": interaction}]
    document = r4.to_json(r4.validate(r4.AuditEvent, resource))
    check_sev1(document)
    return document


def check_sev1(audit_event: Mapping[str, Any]) -> None:
    """Enforce AuditEvent invariant sev-1 (an entity has a name or a query, not both)."""
    for entity in audit_event.get("entity", ()):
        if "name" in entity and "query" in entity:
            raise ValueError("AuditEvent.entity violates sev-1: both name and query are present")


def details_of(audit_event: Mapping[str, Any]) -> dict[str, str]:
    """All `entity.detail` entries of an AuditEvent as type → value."""
    return {
        detail["type"]: detail.get("valueString", detail.get("valueBase64Binary", ""))
        for entity in audit_event.get("entity", ())
        for detail in entity.get("detail", ())
    }


def _agents(event: PipelineEvent, observer: str, is_rest: bool) -> list[dict[str, Any]]:
    actor = event.actor
    gateway = f"Device/{observer}"
    who: dict[str, Any] = {"reference": actor.reference}
    if actor.display:
        who["display"] = actor.display
    agent: dict[str, Any] = {"type": _actor_type(actor.reference, event.stage.action), "who": who}
    if actor.display:
        agent["name"] = actor.display
    if actor.roles:
        agent["role"] = [{"text": role} for role in actor.roles]
    agent["requestor"] = True
    if actor.token_id:
        agent["policy"] = [actor.token_id]
    if actor.network_address:
        agent["network"] = {
            "address": actor.network_address,
            "type": _network_type(actor.network_address),
        }
    agents = [agent]
    # A system event whose actor is the gateway itself is recorded with one agent, not two.
    if actor.reference != gateway:
        agents.append(
            {
                "type": _server_type(event.stage.action, is_rest),
                "who": {"reference": gateway},
                "requestor": False,
            }
        )
    return agents


def _actor_type(reference: str, action: str) -> dict[str, Any]:
    if reference.startswith("Device/"):
        coding = {"system": DCM, "code": "110150", "display": "Application"}
    elif action in {"R", "E"}:
        coding = {"system": PARTICIPATION_TYPE, "code": "IRCP", "display": "information recipient"}
    else:
        coding = {"system": PARTICIPATION_TYPE, "code": "AUT", "display": "author"}
    return {"coding": [coding]}


def _server_type(action: str, is_rest: bool) -> dict[str, Any]:
    if not is_rest:
        coding = {"system": DCM, "code": "110150", "display": "Application"}
    elif action == "R":  # BALP Read reverses the roles: the server is the source of the data
        coding = {"system": DCM, "code": "110153", "display": "Source Role ID"}
    else:
        coding = {"system": DCM, "code": "110152", "display": "Destination Role ID"}
    return {"coding": [coding]}


def _network_type(address: str) -> str:
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return "1"  # audit-event-network-type: Machine Name
    return "2"  # IP Address


def _entities(event: PipelineEvent) -> list[dict[str, Any]]:
    entities: list[dict[str, Any]] = []
    if event.patient_id:
        entities.append(
            {
                "what": {"reference": f"Patient/{event.patient_id}"},
                "type": _PERSON,
                "role": _ROLE_PATIENT,
            }
        )
    if event.encounter_id:
        entities.append(
            {
                "what": {"reference": f"Encounter/{event.encounter_id}"},
                "type": _SYSTEM_OBJECT,
                "role": _ROLE_DOMAIN_RESOURCE,
            }
        )
    carrier: dict[str, Any] | None = None
    if event.study_instance_uid:
        carrier = {
            "what": {
                "type": "ImagingStudy",
                "identifier": {
                    "system": DICOM_UID_SYSTEM,
                    "value": f"urn:oid:{event.study_instance_uid}",
                },
            },
            "type": _SYSTEM_OBJECT,
            "role": _ROLE_REPORT,
        }
        entities.append(carrier)
    for reference in event.entities:
        data = {
            "what": {"reference": reference},
            "type": _SYSTEM_OBJECT,
            "role": _ROLE_DOMAIN_RESOURCE,
        }
        entities.append(data)
        carrier = carrier or data
    if carrier is None:
        carrier = {"type": _SYSTEM_OBJECT, "description": f"pipeline event {event.kind.value}"}
        entities.append(carrier)
    carrier["detail"] = [{"type": k, "valueString": v} for k, v in _details(event)]
    if event.request_id:
        entities.append(
            {
                "what": {"identifier": {"value": event.request_id}},
                "type": {"system": BALP_ENTITY_TYPE, "code": "XrequestId"},
            }
        )
    return entities


def _details(event: PipelineEvent) -> Iterator[tuple[str, str]]:
    yield DETAIL_EVENT, event.kind.value
    if event.model is not None:
        yield DETAIL_MODEL_NAME, event.model.name
        yield DETAIL_MODEL_VERSION, event.model.version
        yield DETAIL_MODEL_SHA256, event.model.sha256
        yield DETAIL_USE_CASE, event.model.use_case
    if event.input_hash:
        yield DETAIL_INPUT_HASH, event.input_hash
    if event.thresholds is not None:
        yield DETAIL_THRESHOLD_REVIEW, repr(event.thresholds.review)
        yield DETAIL_THRESHOLD_SECONDARY, repr(event.thresholds.secondary_review)
    if event.rationale:
        yield DETAIL_RATIONALE, event.rationale
    for key, value in event.detail.items():
        if value:  # valueString must not be empty in FHIR JSON
            yield key, value
