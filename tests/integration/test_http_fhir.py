"""The FHIR HTTP app over a real socket on 127.0.0.1: read, search, update, errors and audit."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy import Engine, insert, select

from fhir_mapping.r4 import CapabilityStatement, OperationOutcome, Task, validate
from gateway.auth.issuer import mint_token
from gateway.auth.tokens import TokenValidator
from gateway.listeners.http import build_http_app
from gateway.persistence.tables import audit_log, outbox, studies
from gateway.review_service import ReviewService
from gateway.reviewer_credentials import grant
from gateway.settings import HttpSettings, Settings, StorageSettings, WorklistSettings
from tests.unit.fhir.samples import STUDY_UID, decision_body, gateway_engine, score, study

pytestmark = pytest.mark.integration

FHIR_JSON = "application/fhir+json"


@dataclass
class Gateway:
    client: TestClient[Any, Any]
    engine: Engine
    settings: Settings
    task_id: str
    readiness: dict[str, Any]

    def token(self, role: str = "reviewer", user: str = "Practitioner/dr-1", **kw: Any) -> str:
        return mint_token(self.settings, role=role, user=user, **kw)

    def auth(self, token: str | None = None, **headers: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token or self.token()}", **headers}

    def audit(self, resource_type: str) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(audit_log.c.resource).where(audit_log.c.resource_type == resource_type)
            ).scalars()
            return [json.loads(r) for r in rows]


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    with gateway_engine(database_url) as engine:
        yield engine


def _study_row() -> dict[str, Any]:
    now = datetime.now(UTC)
    return {
        "study_instance_uid": STUDY_UID,
        "patient_id": "pat-1",
        "patient_name": "Doe^Jane",
        "accession_number": "ACC-1",
        "encounter_id": "enc-1",
        "modality": "CR",
        "state": "scored",
        "instance_count": 1,
        "first_received_at": now,
        "last_received_at": now,
        "stable_due_at": now,
        "score_generation": 1,
        "updated_at": now,
    }


@pytest.fixture
async def gw(engine: Engine, tmp_path: Any) -> AsyncIterator[Gateway]:
    settings = Settings(
        storage=StorageSettings(data_dir=tmp_path),
        http=HttpSettings(base_url="http://127.0.0.1:8080", max_body_bytes=64 * 1024),
        worklist=WorklistSettings(hl7_host="127.0.0.1", hl7_port=2575),
    )
    review = ReviewService(engine, settings)
    with engine.begin() as conn:
        conn.execute(insert(studies).values(_study_row()))
        task = review.create_review_task(conn, study(), score())
        grant(
            conn,
            practitioner="Practitioner/dr-1",
            roles=["reviewer"],
            valid_until=datetime.now(UTC) + timedelta(days=365),
            granted_by="Practitioner/admin",
            now=datetime.now(UTC),
        )
    readiness: dict[str, Any] = {"status": "ready"}

    def probe() -> dict[str, Any]:
        if readiness.get("fail"):
            raise KeyError("secret-internal-detail")
        return dict(readiness)

    app = build_http_app(settings, engine, review, TokenValidator(settings), probe)
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        yield Gateway(client, engine, settings, str(task["id"]), readiness)


async def _outcome(response: Any, status: int) -> dict[str, Any]:
    assert response.status == status, await response.text()
    assert response.content_type == FHIR_JSON
    document: dict[str, Any] = await response.json(content_type=FHIR_JSON)
    validate(OperationOutcome, document)
    return document


async def _read(gw: Gateway) -> tuple[dict[str, Any], str]:
    response = await gw.client.get(f"/fhir/Task/{gw.task_id}", headers=gw.auth())
    assert response.status == 200
    assert response.headers["Last-Modified"].endswith("GMT")
    return await response.json(content_type=FHIR_JSON), response.headers["ETag"]


async def test_read_task_has_etag_and_validates(gw: Gateway) -> None:
    task, etag = await _read(gw)
    assert etag == 'W/"1"'
    validate(Task, task)
    assert task["status"] == "requested"
    assert task["relevantHistory"][0]["reference"].startswith("Provenance/")
    provenance = gw.audit("Provenance")
    assert provenance[0]["target"] == [{"reference": f"Task/{gw.task_id}/_history/1"}]
    await _outcome(await gw.client.get("/fhir/Task/absent", headers=gw.auth()), 404)


async def test_public_endpoints(gw: Gateway) -> None:
    assert (await gw.client.get("/healthz")).status == 200
    assert (await gw.client.get("/readyz")).status == 200
    gw.readiness["status"] = "not-ready"
    response = await gw.client.get("/readyz")
    assert response.status == 503
    assert (await response.json())["status"] == "not-ready"
    metadata = await gw.client.get("/fhir/metadata")
    assert metadata.status == 200
    validate(CapabilityStatement, await metadata.json(content_type=FHIR_JSON))
    for path in ("/.well-known/smart-configuration", "/fhir/.well-known/smart-configuration"):
        smart = await (await gw.client.get(path)).json()
        assert smart["code_challenge_methods_supported"] == ["S256"]
        assert {"token_endpoint", "grant_types_supported", "capabilities"} <= set(smart)
    jwks = await (await gw.client.get("/fhir/auth/jwks")).json()
    assert jwks["keys"][0]["kty"] == "RSA"


async def test_put_without_token_is_401_with_challenge(gw: Gateway) -> None:
    task, _ = await _read(gw)
    response = await gw.client.put(f"/fhir/Task/{gw.task_id}", json=decision_body(task))
    await _outcome(response, 401)
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="hitl-gateway"'


async def test_bad_token_is_401_invalid_token_and_audited_without_the_token(gw: Gateway) -> None:
    bad = gw.token(lifetime=-300)
    response = await gw.client.get(f"/fhir/Task/{gw.task_id}", headers=gw.auth(bad))
    await _outcome(response, 401)
    assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]
    failures = [
        e for e in gw.audit("AuditEvent") if e["type"]["code"] == "110114"
    ]  # DCM User Authentication
    assert failures
    with gw.engine.connect() as conn:
        texts = conn.execute(select(audit_log.c.resource)).scalars().all()
    assert all(bad not in t and bad.split(".")[1] not in t for t in texts)


async def test_missing_scope_is_403_insufficient_scope(gw: Gateway) -> None:
    auditor = gw.token(role="auditor", user="Practitioner/aud-1")
    response = await gw.client.get(f"/fhir/Task/{gw.task_id}", headers=gw.auth(auditor))
    await _outcome(response, 403)
    assert 'error="insufficient_scope"' in response.headers["WWW-Authenticate"]


async def test_put_without_if_match_is_400(gw: Gateway) -> None:
    task, _ = await _read(gw)
    url = f"/fhir/Task/{gw.task_id}"
    response = await gw.client.put(url, json=decision_body(task), headers=gw.auth())
    await _outcome(response, 400)


async def test_put_with_stale_if_match_is_412(gw: Gateway) -> None:
    task, _ = await _read(gw)
    headers = gw.auth(**{"If-Match": 'W/"7"'})
    url = f"/fhir/Task/{gw.task_id}"
    response = await gw.client.put(url, json=decision_body(task), headers=headers)
    await _outcome(response, 412)
    assert (await _read(gw))[1] == 'W/"1"'


async def test_missing_rationale_is_422_and_changes_nothing(gw: Gateway) -> None:
    task, etag = await _read(gw)
    body = decision_body(task, rationale=None)
    url = f"/fhir/Task/{gw.task_id}"
    response = await gw.client.put(url, json=body, headers=gw.auth(**{"If-Match": etag}))
    outcome = await _outcome(response, 422)
    assert "rationale" in outcome["issue"][0]["diagnostics"]
    assert (await _read(gw))[1] == 'W/"1"'
    refused = [e for e in gw.audit("AuditEvent") if e.get("outcome") == "4"]
    assert refused
    with gw.engine.connect() as conn:
        assert conn.execute(select(outbox.c.id)).first() is None


async def test_reviewer_role_is_required(gw: Gateway) -> None:
    task, etag = await _read(gw)
    token = gw.token(role="auditor", user="Practitioner/aud-1", scopes="user/Task.rus")
    url = f"/fhir/Task/{gw.task_id}"
    headers = gw.auth(token, **{"If-Match": etag})
    await _outcome(await gw.client.put(url, json=decision_body(task), headers=headers), 403)


async def test_approve_creates_version_provenance_and_outbox_row(gw: Gateway) -> None:
    task, etag = await _read(gw)
    url = f"/fhir/Task/{gw.task_id}"
    headers = gw.auth(**{"If-Match": etag})
    response = await gw.client.put(url, json=decision_body(task), headers=headers)
    assert response.status == 200, await response.text()
    assert response.headers["ETag"] == 'W/"2"'
    done = await response.json(content_type=FHIR_JSON)
    validate(Task, done)
    assert done["status"] == "completed"
    assert done["owner"] == {"reference": "Practitioner/dr-1"}
    decision_prov = [
        p
        for p in gw.audit("Provenance")
        if p["target"] == [{"reference": f"Task/{gw.task_id}/_history/2"}]
    ]
    assert len(decision_prov) == 1
    assert decision_prov[0]["agent"][0]["who"] == {"reference": "Practitioner/dr-1"}
    assert {"reference": f"Provenance/{decision_prov[0]['id']}"} in done["relevantHistory"]
    with gw.engine.connect() as conn:
        rows = conn.execute(select(outbox)).all()
    assert [(r.destination, r.idempotency_key, r.state) for r in rows] == [
        ("hl7", f"{gw.task_id}:2", "pending")
    ]
    # A neutral priority change; the HL7 adapter renders TQ1-9 "T" from it at delivery time.
    assert (rows[0].kind, json.loads(rows[0].payload)["priority"]) == ("priority-change", "urgent")
    # The same stale version again: exactly one decision per version.
    again = await gw.client.put(url, json=decision_body(task), headers=headers)
    await _outcome(again, 412)
    # The current version of a completed Task cannot be completed again.
    terminal = gw.auth(**{"If-Match": 'W/"2"'})
    await _outcome(await gw.client.put(url, json=decision_body(done), headers=terminal), 409)
    search = await gw.client.get("/fhir/Task?status=completed,requested", headers=gw.auth())
    bundle = await search.json(content_type=FHIR_JSON)
    assert bundle["type"] == "searchset"
    assert [e["resource"]["id"] for e in bundle["entry"]] == [gw.task_id]


async def test_missing_encounter_is_422(gw: Gateway, engine: Engine) -> None:
    review = ReviewService(engine, gw.settings)
    with engine.begin() as conn:
        other = replace(study(encounter_id=""), study_instance_uid="1.2.3.4")
        task = review.create_review_task(
            conn, other, replace(score(), study_instance_uid="1.2.3.4")
        )
    url = f"/fhir/Task/{task['id']}"
    headers = gw.auth(**{"If-Match": 'W/"1"'})
    outcome = await _outcome(
        await gw.client.put(url, json=decision_body(task), headers=headers), 422
    )
    assert "encounter" in outcome["issue"][0]["diagnostics"]


async def test_our_bugs_are_opaque_500(gw: Gateway) -> None:
    gw.readiness["fail"] = True
    response = await gw.client.get("/readyz", headers={"X-Request-Id": "corr-42"})
    outcome = await _outcome(response, 500)
    text = outcome["issue"][0]["diagnostics"]
    assert "corr-42" in text
    assert "secret" not in text


async def test_body_size_and_malformed_json(gw: Gateway) -> None:
    url = f"/fhir/Task/{gw.task_id}"
    headers = gw.auth(**{"If-Match": 'W/"1"', "Content-Type": FHIR_JSON})
    await _outcome(await gw.client.put(url, data="{not json", headers=headers), 400)
    big = json.dumps({"resourceType": "Task", "pad": "x" * 70_000})
    await _outcome(await gw.client.put(url, data=big, headers=headers), 413)
