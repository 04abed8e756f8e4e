"""standards.md §8 "Provenance / model version" lines and AuditEvent search, over HTTP."""

from __future__ import annotations

import pytest

from fhir_mapping.imaging import ONNX_SHA256_SYSTEM
from tests.integration.fhir_api.conftest import FhirGateway
from tests.unit.fhir.samples import MODEL, STUDY_UID, decision_body

pytestmark = pytest.mark.integration
MODEL_DEVICE = "Device/cxr-pneumothorax-3"


async def test_provenance_has_target_recorded_and_agents_with_who(fhir: FhirGateway) -> None:
    bundle = await fhir.get("Provenance")
    assert bundle["total"] >= 1
    for entry in bundle["entry"]:
        prov = entry["resource"]
        assert prov["target"]
        assert all(
            "/_history/" in t["reference"] for t in prov["target"] if "Task/" in t["reference"]
        )
        assert prov["recorded"].endswith("Z")
        assert all(a["who"].get("reference") for a in prov["agent"])


async def test_ai_provenance_agent_is_the_device_with_version_and_onnx_sha256(
    fhir: FhirGateway,
) -> None:
    ai = (await fhir.get(f"Provenance?agent={MODEL_DEVICE}"))["entry"][0]["resource"]
    assert ai["activity"]["coding"][0]["code"] == "CREATE"
    sources = [e["what"] for e in ai["entity"] if e["role"] == "source"]
    assert sources[0]["reference"] == f"ImagingStudy/{STUDY_UID}"
    assert ai["agent"][0]["who"] == {"reference": MODEL_DEVICE}
    device = await fhir.get(MODEL_DEVICE)
    assert device["version"][0]["value"] == MODEL.version
    assert {"system": ONNX_SHA256_SYSTEM, "value": MODEL.sha256} in device["identifier"]
    by_sha = await fhir.get(f"Device?identifier={ONNX_SHA256_SYSTEM}|{MODEL.sha256}")
    assert [e["resource"]["id"] for e in by_sha["entry"]] == ["cxr-pneumothorax-3"]
    assert (await fhir.get("Device/hitl-gateway"))["deviceName"][0]["name"] == "hitl-gateway"


async def test_human_provenance_is_update_by_the_token_practitioner(fhir: FhirGateway) -> None:
    task, etag = await fhir.read_task()
    response = await fhir.put_task(
        decision_body(task, "override", "priority-too-low", override="stat"), etag
    )
    assert response.status == 200
    human = await fhir.get("Provenance?agent=Practitioner/dr-1")
    assert human["total"] == 1
    prov = human["entry"][0]["resource"]
    assert prov["activity"]["coding"][0]["code"] == "UPDATE"
    assert prov["target"] == [{"reference": f"Task/{fhir.task_id}/_history/2"}]
    assert prov["agent"][0]["type"]["coding"][0]["code"] == "author"


async def test_provenance_search_by_target_agent_entity_patient_recorded(fhir: FhirGateway) -> None:
    total = (await fhir.get("Provenance"))["total"]
    assert total == 1
    queries = [
        f"target=Task/{fhir.task_id}",
        f"target=Task/{fhir.task_id}/_history/1",
        f"agent={MODEL_DEVICE}",
        f"entity=ImagingStudy/{STUDY_UID}",
        "patient=Patient/pat-1",
        "recorded=ge2020-01-01",
    ]
    for query in queries:
        assert (await fhir.get(f"Provenance?{query}"))["total"] == 1, query
    for query in ("target=Task/other", "agent=Practitioner/nobody", "patient=Patient/x",
                  "recorded=lt2020-01-01"):  # fmt: skip
        assert (await fhir.get(f"Provenance?{query}"))["total"] == 0, query
    one = (await fhir.get("Provenance"))["entry"][0]["resource"]
    assert (await fhir.get(f"Provenance/{one['id']}"))["id"] == one["id"]
    await fhir.get("Provenance/absent", status=404)


async def test_audit_event_search_by_type_subtype_action_outcome_agent_entity_date(
    fhir: FhirGateway,
) -> None:
    auditor = fhir.token(role="auditor-phi", user="Practitioner/aud-1")
    await fhir.client.get(f"/fhir/Task/{fhir.task_id}")  # an authentication failure
    rest = "http://terminology.hl7.org/CodeSystem/audit-event-type|rest"
    checks = {
        f"type={rest}": 1,
        "type=110114": 1,
        "subtype=create": 1,
        "action=C": 1,
        "action=E": 1,
        "outcome=4": 1,
        "outcome=0": 1,
        "agent=Device/hitl-gateway": 1,
        f"entity=Task/{fhir.task_id}": 1,
        "patient=Patient/pat-1": 1,
        "date=ge2020-01-01&type=rest": 1,
        "date=lt2020-01-01": 0,
    }
    for query, expected in checks.items():
        bundle = await fhir.get(f"AuditEvent?{query}", auditor)
        assert bundle["total"] >= expected if expected else bundle["total"] == 0, query
    event = (await fhir.get("AuditEvent?type=110114", auditor))["entry"][0]["resource"]
    assert (await fhir.get(f"AuditEvent/{event['id']}", auditor))["id"] == event["id"]


async def test_ai_asserted_resources_carry_the_aiast_security_label(fhir: FhirGateway) -> None:
    aiast = {"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "AIAST"}

    def labelled(resource: dict[str, object]) -> bool:
        meta = resource.get("meta", {})
        assert isinstance(meta, dict)
        return any({k: c[k] for k in ("system", "code")} == aiast for c in meta.get("security", []))

    task, _ = await fhir.read_task()
    assert labelled(task)
    observation = (await fhir.get("Observation"))["entry"][0]["resource"]
    assert labelled(observation)
    ai = (await fhir.get(f"Provenance?agent={MODEL_DEVICE}"))["entry"][0]["resource"]
    assert labelled(ai)
