"""standards.md §8: every resource type the gateway emits validates against the official R4
definitions with zero errors (@medplum/core) and no required-binding errors (FHIR.js)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from fhir_mapping import subscriptions as sub
from tests.integration.fhir_api.conftest import FHIR_JSON, FhirGateway
from tests.integration.fhir_api.validator import validate_resources
from tests.unit.fhir.samples import STUDY_UID, decision_body, score, study

pytestmark = pytest.mark.integration

EMITTED = {
    "Task", "Provenance", "AuditEvent", "ImagingStudy", "Observation", "Device", "CodeSystem",
    "ValueSet", "CapabilityStatement", "OperationOutcome", "Bundle", "Subscription", "Parameters",
}  # fmt: skip


async def _exercise(fhir: FhirGateway) -> list[dict[str, Any]]:
    """Drive every workflow once and collect what the API serves."""
    emitted: list[dict[str, Any]] = []
    with fhir.engine.begin() as conn:
        fhir.review.create_review_task(conn, study(), score(0.97))
    task, etag = await fhir.read_task()
    emitted.append(task)
    claimed = await fhir.put_task(dict(task, status="in-progress"), etag)
    emitted.append(await claimed.json(content_type=FHIR_JSON))
    body = decision_body(await claimed.json(content_type=FHIR_JSON), "reject", "other", "motion")
    done = await fhir.put_task(body, claimed.headers["ETag"])
    emitted.append(await done.json(content_type=FHIR_JSON))
    secondary = (await fhir.get(f"Task?part-of=Task/{fhir.task_id}"))["entry"][0]["resource"]
    emitted.append(secondary)
    error = await fhir.put_task(decision_body(secondary), None)
    emitted.append(await error.json(content_type=FHIR_JSON))
    admin = fhir.token(role="admin", user="Practitioner/admin")
    for path in (
        f"Task?_id={fhir.task_id}&_revinclude=Provenance:target",
        f"Task/{fhir.task_id}/_history",
        "Provenance", "AuditEvent?_count=200", "ImagingStudy", "Observation", "Device",
        "CodeSystem", "ValueSet", "metadata", f"ImagingStudy/{STUDY_UID}",
    ):  # fmt: skip
        document = await fhir.get(path, admin)
        emitted.append(document)
        emitted.extend(e["resource"] for e in document.get("entry", []))
    body = {
        "resourceType": "Subscription", "meta": {"profile": [sub.SUBSCRIPTION_PROFILE]},
        "status": "requested", "reason": "worklist", "criteria": sub.TOPIC,
        "channel": {"type": "rest-hook", "endpoint": "http://127.0.0.1:9/hook",
                    "payload": sub.PAYLOAD_TYPE},
        "_criteria": {"extension": [{"url": sub.FILTER_CRITERIA,
                                     "valueString": "Task?owner=Practitioner/dr-1"}]},
    }  # fmt: skip
    created = await fhir.client.post("/fhir/Subscription", json=body, headers=fhir.auth())
    subscription = await created.json(content_type=FHIR_JSON)
    emitted.append(subscription)
    emitted.append(await fhir.get(f"Subscription/{subscription['id']}/$status"))
    event = sub.NotificationEvent(1, datetime.now(UTC), f"Task/{fhir.task_id}")
    for kind, events in (("handshake", []), ("heartbeat", []), ("event-notification", [event])):
        emitted.append(
            sub.notification_bundle(
                base="http://127.0.0.1:8080/fhir", subscription_id=subscription["id"],
                status="active", kind=kind, events_since_start=1, when=datetime.now(UTC),
                events=events,
            )
        )  # fmt: skip
    return emitted


async def test_every_emitted_resource_type_passes_the_independent_validator(
    fhir: FhirGateway,
) -> None:
    emitted = await _exercise(fhir)
    assert {r["resourceType"] for r in emitted} >= EMITTED
    results = validate_resources(emitted)
    failures = [r for r in results if r["errors"] or r["bindingErrors"]]
    assert failures == []


async def test_task_status_intent_priority_are_in_their_value_sets(fhir: FhirGateway) -> None:
    tasks = [r for r in await _exercise(fhir) if r["resourceType"] == "Task"]
    assert len(tasks) >= 4
    for task in tasks:
        assert task["status"] in {
            "draft", "requested", "received", "accepted", "rejected", "ready", "cancelled",
            "in-progress", "on-hold", "failed", "completed", "entered-in-error",
        }  # fmt: skip
        assert task["intent"] in {
            "unknown", "proposal", "plan", "order", "original-order", "reflex-order",
            "filler-order", "instance-order", "option",
        }  # fmt: skip
        assert task.get("priority", "routine") in {"routine", "urgent", "asap", "stat"}
        if task["status"] == "completed":
            assert any(o["type"]["coding"][0]["code"] == "decision" for o in task["output"])


def test_the_validator_catches_what_our_models_let_through() -> None:
    bad: list[dict[str, Any]] = [
        {"resourceType": "Task", "id": "a", "status": "approved", "intent": "order"},
        {"resourceType": "Task", "id": "b", "status": "requested", "intent": "order",
         "authoredOn": "2026-01-02T00:00:00Z", "lastModified": "2026-01-01T00:00:00Z"},
        {"resourceType": "Provenance", "id": "c", "recorded": "2026-01-01T00:00:00Z",
         "agent": [{"who": {"reference": "Device/x"}}]},
    ]  # fmt: skip
    results = {r["id"]: r for r in validate_resources(bad)}
    assert results["a"]["bindingErrors"]  # Task.status outside task-status
    assert results["b"]["errors"]  # inv-1
    assert results["c"]["errors"]  # Provenance.target 1..*
