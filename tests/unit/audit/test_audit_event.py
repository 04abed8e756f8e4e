"""PipelineEvent → AuditEvent mapping (standards.md §2.2, §2.3; checklist "AuditEvent / BALP")."""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Any

import pytest

from fhir_mapping import r4
from fhir_mapping.audit_event import (
    ACTIONS,
    DETAIL_INPUT_HASH,
    DETAIL_MODEL_SHA256,
    DETAIL_MODEL_VERSION,
    DETAIL_RATIONALE,
    DETAIL_THRESHOLD_REVIEW,
    DETAIL_THRESHOLD_SECONDARY,
    audit_event_for,
    check_sev1,
    details_of,
)
from gateway.pipeline import PIPELINE, Event, PipelineEvent
from tests.unit.audit.support import GATEWAY, decision_event, scored_event


def _map(event: PipelineEvent) -> dict[str, Any]:
    return audit_event_for(event, record_id="ae-1", observer="hitl-gateway")


def _patient_entities(resource: dict[str, Any]) -> list[dict[str, Any]]:
    return [e for e in resource["entity"] if e.get("role", {}).get("code") == "1"]


@pytest.mark.parametrize("kind", list(Event))
def test_every_event_kind_maps_to_a_valid_audit_event(kind: Event) -> None:
    resource = _map(dataclasses.replace(decision_event(), kind=kind))
    r4.validate(r4.AuditEvent, resource)
    assert resource["type"]["code"] == PIPELINE[kind].audit_type[1]
    assert resource["action"] in ACTIONS
    assert datetime.fromisoformat(resource["recorded"]).tzinfo is not None
    assert resource["source"]["observer"] == {"reference": "Device/hitl-gateway"}
    assert resource["source"]["type"][0]["code"] == "4"
    assert resource["agent"]
    assert all(isinstance(agent["requestor"], bool) for agent in resource["agent"])
    assert sum(agent["requestor"] for agent in resource["agent"]) == 1
    check_sev1(resource)
    assert all(not ("name" in e and "query" in e) for e in resource["entity"])


def test_reviewer_agent_carries_token_id_and_address_and_gateway_is_a_second_agent() -> None:
    user, server = _map(decision_event())["agent"]
    assert user["who"]["reference"] == "Practitioner/dr-a"
    assert user["requestor"] is True
    assert user["policy"] == ["jti-123"]
    assert user["network"] == {"address": "127.0.0.1", "type": "2"}
    assert user["type"]["coding"][0]["code"] == "AUT"
    assert server["who"]["reference"] == "Device/hitl-gateway"
    assert server["requestor"] is False
    assert server["type"]["coding"][0]["code"] == "110152"


def test_gateway_as_actor_is_one_agent() -> None:
    agents = _map(scored_event())["agent"]
    assert [a["who"]["reference"] for a in agents] == [GATEWAY.reference]
    assert agents[0]["requestor"] is True


def test_rest_event_has_balp_type_subtype_and_outcome() -> None:
    resource = _map(decision_event())
    assert resource["type"]["system"] == "http://terminology.hl7.org/CodeSystem/audit-event-type"
    assert resource["type"]["code"] == "rest"
    assert resource["subtype"] == [
        {"system": "http://hl7.org/fhir/restful-interaction", "code": "update"}
    ]
    assert resource["action"] == "U"
    assert resource["outcome"] == "0"


def test_rest_event_without_subtype_gets_the_interaction_of_its_action() -> None:
    resource = _map(decision_event(kind=Event.REVIEW_REQUESTED, subtype=""))
    assert resource["subtype"][0]["code"] == "create"


def test_failure_outcome_and_description() -> None:
    resource = _map(decision_event(outcome="8", outcome_desc="reviewer credential expired"))
    assert resource["outcome"] == "8"
    assert resource["outcomeDesc"] == "reviewer credential expired"


def test_patient_entity_exactly_once_when_patient_present() -> None:
    patients = _patient_entities(_map(decision_event()))
    assert len(patients) == 1
    assert patients[0]["what"] == {"reference": "Patient/pat-1"}
    assert patients[0]["type"]["code"] == "1"


def test_no_patient_entity_without_patient() -> None:
    assert _patient_entities(_map(decision_event(patient_id=""))) == []


def test_study_encounter_data_and_transaction_entities() -> None:
    entities = _map(decision_event())["entity"]
    whats = [e.get("what", {}) for e in entities]
    assert {"reference": "Encounter/enc-1"} in whats
    assert {"reference": "Task/t-1/_history/2"} in whats
    study = next(w for w in whats if w.get("type") == "ImagingStudy")
    assert study["identifier"] == {
        "system": "urn:dicom:uid",
        "value": "urn:oid:1.2.826.0.1.3680043.8.498.1",
    }
    data = next(e for e in entities if e.get("what") == {"reference": "Task/t-1/_history/2"})
    assert (data["type"]["code"], data["role"]["code"]) == ("2", "4")
    transaction = next(e for e in entities if e["type"]["code"] == "XrequestId")
    assert transaction["what"]["identifier"]["value"] == "req-42"


def test_details_carry_model_version_input_hash_thresholds_and_rationale() -> None:
    details = details_of(_map(decision_event()))
    assert details[DETAIL_MODEL_VERSION] == "7"
    assert details[DETAIL_MODEL_SHA256] == "ab" * 32
    assert details[DETAIL_INPUT_HASH] == "cd" * 32
    assert details[DETAIL_THRESHOLD_REVIEW] == "0.8"
    assert details[DETAIL_THRESHOLD_SECONDARY] == "0.95"
    assert details[DETAIL_RATIONALE] == "finding-confirmed"
    assert details["decision"] == "approve"


def test_event_without_study_or_entities_still_carries_its_details() -> None:
    event = decision_event(study_instance_uid="", entities=(), kind=Event.AUTHENTICATION_FAILED)
    assert details_of(_map(event))["pipeline-event"] == "authentication-failed"


def test_naive_time_is_refused() -> None:
    with pytest.raises(ValueError, match="time zone"):
        _map(decision_event(occurred_at=datetime(2025, 1, 1)))


def test_outcome_outside_the_value_set_is_refused() -> None:
    with pytest.raises(ValueError, match="audit-event-outcome"):
        _map(decision_event(outcome="1"))


def test_sev1_violation_is_refused() -> None:
    with pytest.raises(ValueError, match="sev-1"):
        check_sev1({"entity": [{"name": "n", "query": "cQ=="}]})
