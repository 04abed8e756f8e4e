"""FHIR REST interaction → IHE Basic Audit Log Patterns (BALP 1.1) AuditEvent (pure; no I/O).

Shapes (IHE.BasicAudit.Create/Read/Update/Delete/Query and their Patient* variants):
`type` = audit-event-type#rest; `subtype` = the restful-interaction code; `action` C R U D E
(Query is E); `agent` slices client (`who`, `network`), server (`who`, `network`) and user
(`who`, `requestor` = true, no network) with the type codes BALP assigns per action (Read
reverses 110152/110153; Delete has client 110150 and server custodian); entities: `transaction`
(BasicAuditEntityType#XrequestId with the X-Request-Id), `data` (audit-entity-type#2, object-role
#4, `what` = the resource, version-specific when known) or, for a Query, `query` (object-role #24,
base64 of the raw request, no `what`); and one `patient` entity (audit-entity-type#1,
object-role#1): BALP records one AuditEvent per patient.
"""

from __future__ import annotations

import base64
import ipaddress
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from fhir_mapping import r4
from fhir_mapping.audit_event import (
    BALP_ENTITY_TYPE,
    DCM,
    ENTITY_TYPE,
    OBJECT_ROLE,
    PARTICIPATION_TYPE,
    RESTFUL_INTERACTION,
    SOURCE_TYPE,
    check_sev1,
)
from gateway.domain.model import Actor
from gateway.pipeline import REST

PARTICIPANT_TYPE = "http://terminology.hl7.org/CodeSystem/provenance-participant-type"
BALP_PROFILE = "https://profiles.ihe.net/ITI/BALP/StructureDefinition/IHE.BasicAudit."
RESTFUL_CODES = frozenset(
    {
        "read", "vread", "update", "patch", "delete", "history", "history-instance",
        "history-type", "history-system", "create", "search", "search-type", "search-system",
        "search-compartment", "capabilities", "transaction", "batch", "operation",
    }
)  # fmt: skip
_ACTION = {
    "create": "C",
    "read": "R",
    "vread": "R",
    "history-instance": "R",
    "history-type": "R",
    "history": "R",
    "update": "U",
    "patch": "U",
    "delete": "D",
    "search": "E",
    "search-type": "E",
    "search-system": "E",
    "search-compartment": "E",
}
_PROFILE = {"C": "Create", "R": "Read", "U": "Update", "D": "Delete", "E": "Query"}


def _dcm(code: str, display: str) -> dict[str, Any]:
    return {"coding": [{"system": DCM, "code": code, "display": display}]}


_SOURCE_ROLE = _dcm("110153", "Source Role ID")
_DESTINATION_ROLE = _dcm("110152", "Destination Role ID")
_APPLICATION = _dcm("110150", "Application")
_CUSTODIAN = {"coding": [{"system": PARTICIPANT_TYPE, "code": "custodian", "display": "Custodian"}]}


@dataclass(frozen=True, slots=True)
class RestInteraction:
    """One FHIR REST interaction as the audit needs it."""

    interaction: str  # restful-interaction code, or an operation name
    method: str
    path: str
    status: int
    references: tuple[str, ...]
    query: str  # raw query string
    user: Actor | None
    client_id: str
    client_address: str
    server_address: str
    request_id: str
    occurred_at: datetime
    outcome_text: str = ""


def action_of(interaction: str) -> str:
    """BALP action of a restful-interaction code (operations and others: E)."""
    return _ACTION.get(interaction, "E")


def balp_audit_event(
    rest: RestInteraction, *, patient_id: str = "", observer: str = "hitl-gateway"
) -> dict[str, Any]:
    """The validated BALP AuditEvent of one interaction (about one patient, or none)."""
    if rest.occurred_at.tzinfo is None:
        raise ValueError("occurred_at must carry a time zone")
    action = action_of(rest.interaction)
    subtype = rest.interaction if rest.interaction in RESTFUL_CODES else "operation"
    profile = ("Patient" if patient_id else "") + _PROFILE[action]
    resource: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "meta": {"profile": [BALP_PROFILE + profile]},
        "type": {"system": REST, "code": "rest", "display": "Restful Operation"},
        "subtype": [{"system": RESTFUL_INTERACTION, "code": subtype, "display": subtype}],
        "action": action,
        "recorded": rest.occurred_at.astimezone(UTC).isoformat(),
        "outcome": _outcome(rest.status),
        "agent": _agents(rest, action, observer),
        "source": {
            "observer": {"reference": f"Device/{observer}"},
            "type": [{"system": SOURCE_TYPE, "code": "4", "display": "Application Server"}],
        },
        "entity": _entities(rest, action, patient_id),
    }
    if rest.outcome_text and resource["outcome"] != "0":
        resource["outcomeDesc"] = rest.outcome_text[:1000]
    document = r4.to_json(r4.validate(r4.AuditEvent, resource))
    check_sev1(document)
    return document


def _outcome(status: int) -> str:
    if status < 400:
        return "0"
    return "4" if status < 500 else "8"


def _network(address: str) -> dict[str, str]:
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return {"address": address, "type": "1"}  # machine name
    return {"address": address, "type": "2"}  # IP address


def _agents(rest: RestInteraction, action: str, observer: str) -> list[dict[str, Any]]:
    client_type, server_type = {
        "R": (_DESTINATION_ROLE, _SOURCE_ROLE),
        "D": (_APPLICATION, _CUSTODIAN),
    }.get(action, (_SOURCE_ROLE, _DESTINATION_ROLE))
    client_who: dict[str, Any] = (
        {"identifier": {"system": "urn:ietf:rfc:7591:client_id", "value": rest.client_id}}
        if rest.client_id
        else {"display": "client (no client_id)"}
    )
    agents: list[dict[str, Any]] = [
        {
            "type": client_type,
            "who": client_who,
            "requestor": rest.user is None,
            "network": _network(rest.client_address or "unknown"),
        },
        {
            "type": server_type,
            "who": {"reference": f"Device/{observer}"},
            "requestor": False,
            "network": _network(rest.server_address),
        },
    ]
    user = rest.user
    if user is not None and user.reference:
        code, display = ("IRCP", "information recipient") if action in "RE" else ("AUT", "author")
        agent: dict[str, Any] = {
            "type": {"coding": [{"system": PARTICIPATION_TYPE, "code": code, "display": display}]},
            "who": {"reference": user.reference},
            "requestor": True,
        }
        if user.display:
            agent["name"] = user.display
        if user.roles:
            agent["role"] = [{"text": role} for role in user.roles]
        if user.token_id:
            agent["policy"] = [user.token_id]
        agents.append(agent)
    return agents


def _entities(rest: RestInteraction, action: str, patient_id: str) -> list[dict[str, Any]]:
    entities: list[dict[str, Any]] = []
    if rest.request_id:
        entities.append(
            {
                "what": {"identifier": {"value": rest.request_id}},
                "type": {"system": BALP_ENTITY_TYPE, "code": "XrequestId"},
            }
        )
    system_object = {"system": ENTITY_TYPE, "code": "2", "display": "System Object"}
    if action == "E":
        raw = f"{rest.method} {rest.path}" + (f"?{rest.query}" if rest.query else "")
        entities.append(
            {
                "type": system_object,
                "role": {"system": OBJECT_ROLE, "code": "24", "display": "Query"},
                "query": base64.b64encode(raw.encode("utf-8")).decode("ascii"),
                "description": raw[:1000],
            }
        )
    # A query is recorded by its request, not by every hit (BALP Query has no data entity).
    data = () if action == "E" else rest.references or (_path_reference(rest.path),)
    for reference in data:
        if reference:
            entities.append(
                {
                    "what": {"reference": reference},
                    "type": system_object,
                    "role": {"system": OBJECT_ROLE, "code": "4", "display": "Domain Resource"},
                }
            )
    if patient_id:
        entities.append(
            {
                "what": {"reference": f"Patient/{patient_id}"},
                "type": {"system": ENTITY_TYPE, "code": "1", "display": "Person"},
                "role": {"system": OBJECT_ROLE, "code": "1", "display": "Patient"},
            }
        )
    return entities


def _path_reference(path: str) -> str:
    """`Task/123` from `/fhir/Task/123` (the resource asked for when nothing was returned)."""
    parts = [p for p in path.split("/") if p]
    if len(parts) >= 3 and parts[-2][:1].isupper() and not parts[-1].startswith("$"):
        return f"{parts[-2]}/{parts[-1]}"
    return ""
