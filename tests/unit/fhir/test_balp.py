"""IHE BALP shapes of REST AuditEvents (standards.md §8 "AuditEvent / BALP", one test per line)."""

from __future__ import annotations

import base64
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest

from fhir_mapping.audit_event import check_sev1
from fhir_mapping.balp import RestInteraction, action_of, balp_audit_event
from gateway.domain.model import Actor

USER = Actor(reference="Practitioner/dr-1", roles=("auditor",), display="Dr One", token_id="jti-9")
READ = RestInteraction(
    interaction="read",
    method="GET",
    path="/fhir/Task/t-1",
    status=200,
    references=("Task/t-1/_history/3",),
    query="",
    user=USER,
    client_id="review-app",
    client_address="127.0.0.1",
    server_address="gw.example.org",
    request_id="req-77",
    occurred_at=datetime(2026, 5, 1, 10, 0, tzinfo=UTC),
)
SEARCH = replace(
    READ, interaction="search-type", path="/fhir/Task", query="status=requested&_count=5"
)


def _agent(event: dict[str, Any], code: str) -> dict[str, Any]:
    agents: list[dict[str, Any]] = [
        a for a in event["agent"] if a["type"]["coding"][0]["code"] == code
    ]
    assert len(agents) == 1
    return agents[0]


def test_every_audit_event_has_the_required_elements_and_sev1() -> None:
    for rest in (READ, SEARCH, replace(READ, interaction="update", method="PUT")):
        event = balp_audit_event(rest, patient_id="pat-1")
        assert event["type"]["code"] == "rest"
        assert event["recorded"]
        assert event["agent"]
        assert all("requestor" in a for a in event["agent"])
        assert event["source"]["observer"]["reference"] == "Device/hitl-gateway"
        check_sev1(event)


@pytest.mark.parametrize(
    ("interaction", "action"),
    [
        ("create", "C"),
        ("read", "R"),
        ("vread", "R"),
        ("update", "U"),
        ("patch", "U"),
        ("delete", "D"),
        ("search-type", "E"),
        ("search-system", "E"),
        ("escalate", "E"),
    ],
)
def test_rest_actions_are_balp_shaped(interaction: str, action: str) -> None:
    event = balp_audit_event(replace(READ, interaction=interaction))
    assert event["type"] == {
        "system": "http://terminology.hl7.org/CodeSystem/audit-event-type",
        "code": "rest",
        "display": "Restful Operation",
    }
    expected = interaction if interaction != "escalate" else "operation"
    assert event["subtype"][0]["code"] == expected
    assert event["action"] == action == action_of(interaction)
    assert event["outcome"] == "0"
    failed = balp_audit_event(replace(READ, status=412, outcome_text="stale If-Match"))
    assert (failed["outcome"], failed["outcomeDesc"]) == ("4", "stale If-Match")


def test_client_server_and_user_agents_with_balp_type_codes() -> None:
    read = balp_audit_event(READ)
    client, server = _agent(read, "110152"), _agent(read, "110153")  # Read reverses the roles
    assert client["network"] == {"address": "127.0.0.1", "type": "2"}
    assert client["who"]["identifier"]["value"] == "review-app"
    assert server["network"] == {"address": "gw.example.org", "type": "1"}
    assert server["who"]["reference"] == "Device/hitl-gateway"
    user = _agent(read, "IRCP")
    assert user["requestor"] is True
    assert "network" not in user
    assert user["who"]["reference"] == "Practitioner/dr-1"
    assert user["policy"] == ["jti-9"]  # the token id (standards §8 SMART, last line)
    update = balp_audit_event(replace(READ, interaction="update"))
    assert _agent(update, "110153")["who"]["identifier"]["value"] == "review-app"  # client
    assert _agent(update, "110152")["who"]["reference"] == "Device/hitl-gateway"  # server
    assert _agent(update, "AUT")["requestor"] is True
    delete = balp_audit_event(replace(READ, interaction="delete"))
    assert _agent(delete, "110150")["network"]["address"] == "127.0.0.1"
    assert _agent(delete, "custodian")["who"]["reference"] == "Device/hitl-gateway"


def test_data_entity_is_version_specific_and_query_entity_is_base64() -> None:
    read = balp_audit_event(READ)
    (data,) = [e for e in read["entity"] if e.get("role", {}).get("code") == "4"]
    assert data["what"]["reference"] == "Task/t-1/_history/3"
    assert data["type"]["code"] == "2"
    assert data["role"]["code"] in {"4", "3", "20"}
    search = balp_audit_event(SEARCH)
    (query,) = [e for e in search["entity"] if e.get("role", {}).get("code") == "24"]
    assert "what" not in query
    assert query["type"]["code"] == "2"
    raw = base64.b64decode(query["query"]).decode()
    assert raw == "GET /fhir/Task?status=requested&_count=5"
    assert not [e for e in search["entity"] if e.get("role", {}).get("code") == "4"]


def test_exactly_one_patient_entity_when_a_patient_is_involved() -> None:
    event = balp_audit_event(READ, patient_id="pat-1")
    patients = [e for e in event["entity"] if e.get("type", {}).get("code") == "1"]
    assert len(patients) == 1
    assert patients[0]["role"]["code"] == "1"
    assert patients[0]["what"]["reference"] == "Patient/pat-1"
    assert event["meta"]["profile"][0].endswith("IHE.BasicAudit.PatientRead")
    anonymous = balp_audit_event(READ)
    assert not [e for e in anonymous["entity"] if e.get("type", {}).get("code") == "1"]
    assert anonymous["meta"]["profile"][0].endswith("IHE.BasicAudit.Read")


def test_x_request_id_is_the_transaction_entity() -> None:
    event = balp_audit_event(READ)
    (transaction,) = [e for e in event["entity"] if e["type"].get("code") == "XrequestId"]
    assert transaction["what"]["identifier"]["value"] == "req-77"
    assert "BasicAuditEntityType" in transaction["type"]["system"]


def test_naive_times_are_refused() -> None:
    with pytest.raises(ValueError, match="time zone"):
        balp_audit_event(replace(READ, occurred_at=datetime(2026, 1, 1)))
