"""The audit over real HTTP on 127.0.0.1: BALP records of reads, searches and updates ("who
looked"), security events on refused tokens, and the Bulk Data `$export` of the trail."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy import Engine, func, insert, select

from gateway.auth.issuer import mint_token
from gateway.auth.tokens import TokenValidator
from gateway.listeners.http import build_http_app
from gateway.listeners.rest_audit import attach_audit
from gateway.persistence.tables import audit_log, studies
from gateway.review_service import ReviewService
from gateway.reviewer_credentials import grant
from gateway.settings import HttpSettings, Settings, StorageSettings
from tests.integration.fhir_api.validator import validate_resources
from tests.unit.fhir.samples import STUDY_UID, gateway_engine, score, study

pytestmark = pytest.mark.integration
FHIR_JSON = "application/fhir+json"


@dataclass
class Gateway:
    client: TestClient[Any, Any]
    engine: Engine
    settings: Settings
    task_id: str

    def auth(
        self, role: str = "reviewer", user: str = "Practitioner/dr-1", **h: str
    ) -> dict[str, str]:
        return {"Authorization": f"Bearer {mint_token(self.settings, role=role, user=user)}", **h}

    def audit_events(self, after: int = 0) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(audit_log.c.resource)
                .where(audit_log.c.resource_type == "AuditEvent", audit_log.c.seq > after)
                .order_by(audit_log.c.seq)
            ).scalars()
            return [json.loads(r) for r in rows]

    def head(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.max(audit_log.c.seq))).scalar_one())


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    with gateway_engine(database_url) as engine:
        yield engine


@pytest.fixture
async def gw(engine: Engine, tmp_path: Any) -> AsyncIterator[Gateway]:
    settings = Settings(
        storage=StorageSettings(data_dir=tmp_path),
        http=HttpSettings(base_url="http://127.0.0.1:8080"),
    )
    review = ReviewService(engine, settings)
    now = datetime.now(UTC)
    with engine.begin() as conn:
        conn.execute(
            insert(studies).values(
                study_instance_uid=STUDY_UID, patient_id="pat-1", patient_name="Doe^Jane",
                accession_number="ACC-1", encounter_id="enc-1", modality="CR", state="scored",
                instance_count=1, first_received_at=now, last_received_at=now,
                stable_due_at=now, score_generation=1, updated_at=now,
            )
        )  # fmt: skip
        task = review.create_review_task(conn, study(), score())
        grant(
            conn,
            practitioner="Practitioner/dr-1",
            roles=["reviewer"],
            valid_until=now + timedelta(days=365),
            granted_by="Practitioner/admin",
            now=now,
        )
    app = build_http_app(settings, engine, review, TokenValidator(settings), lambda: {})
    attach_audit(app)
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        yield Gateway(client, engine, settings, str(task["id"]))


def _rest(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in events if e["type"]["code"] == "rest" and "meta" in e and any(
        "BasicAudit" in p for p in e["meta"].get("profile", ())
    )]  # fmt: skip


def _codes(event: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {a["type"]["coding"][0]["code"]: a for a in event["agent"]}


async def test_a_read_is_recorded_with_client_server_user_patient_and_request_id(
    gw: Gateway,
) -> None:
    before = gw.head()
    headers = gw.auth(**{"X-Request-Id": "audit-read-1"})
    response = await gw.client.get(f"/fhir/Task/{gw.task_id}", headers=headers)
    assert response.status == 200
    (event,) = _rest(gw.audit_events(before))
    assert (event["action"], event["subtype"][0]["code"], event["outcome"]) == ("R", "read", "0")
    agents = _codes(event)
    assert agents["110152"]["network"]["address"] == "127.0.0.1"  # client (Read reverses)
    assert agents["110153"]["network"]["address"] == "127.0.0.1"  # server, from the base URL
    assert agents["IRCP"]["who"]["reference"] == "Practitioner/dr-1"
    assert agents["IRCP"]["requestor"] is True
    assert agents["IRCP"]["policy"]
    entities = {e["type"].get("code"): e for e in event["entity"]}
    assert entities["XrequestId"]["what"]["identifier"]["value"] == "audit-read-1"
    assert entities["1"]["what"]["reference"] == "Patient/pat-1"
    assert entities["2"]["what"]["reference"] == f"Task/{gw.task_id}/_history/1"


async def test_a_search_by_an_auditor_is_recorded_as_a_query_per_patient(gw: Gateway) -> None:
    before = gw.head()
    response = await gw.client.get(
        "/fhir/Task?status=requested", headers=gw.auth("auditor-phi", "Practitioner/aud-1")
    )
    assert response.status == 200, await response.text()
    events = _rest(gw.audit_events(before))
    assert events
    for event in events:
        assert (event["action"], event["subtype"][0]["code"]) == ("E", "search-type")
        (query,) = [e for e in event["entity"] if e.get("role", {}).get("code") == "24"]
        assert base64.b64decode(query["query"]).decode() == "GET /fhir/Task?status=requested"
        assert _codes(event)["IRCP"]["who"]["reference"] == "Practitioner/aud-1"
    patients = [
        e["what"]["reference"] for ev in events for e in ev["entity"] if e["type"]["code"] == "1"
    ]
    assert patients == ["Patient/pat-1"]


async def test_refused_tokens_are_security_events_not_balp_records(gw: Gateway) -> None:
    before = gw.head()
    response = await gw.client.get(f"/fhir/Task/{gw.task_id}")
    assert response.status == 401
    response = await gw.client.get(
        "/fhir/AuditEvent", headers=gw.auth("reviewer", "Practitioner/dr-1")
    )
    assert response.status == 403
    events = gw.audit_events(before)
    assert not _rest(events)
    assert [e["type"]["code"] for e in events] == ["110114", "110113"]


async def _finished(gw: Gateway, status_url: str, headers: dict[str, str]) -> dict[str, Any]:
    path = status_url.removeprefix("http://127.0.0.1:8080")
    for _ in range(400):  # polls the status URL as the Bulk Data client does, bounded
        response = await gw.client.get(path, headers=headers)
        if response.status == 200:
            manifest: dict[str, Any] = await response.json()
            return manifest
        assert response.status == 202
        assert response.headers["X-Progress"]
        await asyncio.sleep(0.02)
    raise AssertionError("the export did not finish")


async def test_bulk_export_kickoff_status_files_and_cancel(gw: Gateway) -> None:
    auditor = gw.auth("auditor-phi", "Practitioner/aud-1")
    response = await gw.client.get("/fhir/$export?_type=AuditEvent,Provenance", headers=auditor)
    assert response.status == 400  # no Prefer: respond-async
    bad = await gw.client.get(
        "/fhir/$export?_type=Task", headers={**auditor, "Prefer": "respond-async"}
    )
    assert bad.status == 400
    expected = {"AuditEvent": len(gw.audit_events()), "Provenance": 1}
    kickoff = await gw.client.get(
        "/fhir/$export?_type=AuditEvent,Provenance",
        headers={**auditor, "Prefer": "respond-async", "Accept": FHIR_JSON},
    )
    assert kickoff.status == 202, await kickoff.text()
    status_url = kickoff.headers["Content-Location"]
    manifest = await _finished(gw, status_url, auditor)
    assert manifest["requiresAccessToken"] is True
    assert manifest["request"].endswith("$export?_type=AuditEvent,Provenance")
    outputs = {o["type"]: o for o in manifest["output"]}
    assert outputs["Provenance"]["count"] == 1
    assert outputs["AuditEvent"]["count"] >= expected["AuditEvent"]
    file_path = outputs["Provenance"]["url"].removeprefix("http://127.0.0.1:8080")
    download = await gw.client.get(file_path, headers=auditor)
    assert download.status == 200
    assert download.headers["Content-Type"].startswith("application/fhir+ndjson")
    lines = (await download.text()).splitlines()
    assert [json.loads(line)["resourceType"] for line in lines] == ["Provenance"]
    other = gw.auth("auditor-phi", "Practitioner/aud-2")
    path = status_url.removeprefix("http://127.0.0.1:8080")
    assert (await gw.client.get(path, headers=other)).status == 404
    assert (await gw.client.get(file_path, headers=other)).status == 404
    assert (await gw.client.delete(path, headers=auditor)).status == 202
    assert (await gw.client.get(path, headers=auditor)).status == 404
    kinds = [
        d["valueString"]
        for e in gw.audit_events()
        for ent in e["entity"]
        for d in ent.get("detail", ())
        if d["type"] == "audit-activity"
    ]
    assert "bulk-export" in kinds


async def test_bulk_export_since_and_masking_for_auditors_without_phi(gw: Gateway) -> None:
    auditor = gw.auth("auditor", "Practitioner/aud-3")
    future = (datetime.now(UTC) + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    kickoff = await gw.client.get(
        f"/fhir/$export?_type=Provenance&_since={future}",
        headers={**auditor, "Prefer": "respond-async"},
    )
    assert kickoff.status == 202
    manifest = await _finished(gw, kickoff.headers["Content-Location"], auditor)
    assert manifest["output"] == []
    kickoff = await gw.client.get(
        "/fhir/$export?_type=AuditEvent", headers={**auditor, "Prefer": "respond-async"}
    )
    manifest = await _finished(gw, kickoff.headers["Content-Location"], auditor)
    url = manifest["output"][0]["url"].removeprefix("http://127.0.0.1:8080")
    body = await (await gw.client.get(url, headers=auditor)).text()
    assert body
    assert "Patient/pat-1" not in body


async def test_every_rest_audit_record_validates_independently(gw: Gateway) -> None:
    auditor = gw.auth("auditor-phi", "Practitioner/aud-1", **{"X-Request-Id": "v-1"})
    assert (await gw.client.get(f"/fhir/Task/{gw.task_id}", headers=auditor)).status == 200
    assert (await gw.client.get("/fhir/Task?status=requested", headers=auditor)).status == 200
    assert (await gw.client.get("/fhir/Task/unknown", headers=auditor)).status == 404
    events = _rest(gw.audit_events())
    assert {e["action"] for e in events} == {"R", "E"}
    assert any(e["outcome"] == "4" for e in events)
    invalid = [r for r in validate_resources(events) if r["errors"] or r["bindingErrors"]]
    assert invalid == []
