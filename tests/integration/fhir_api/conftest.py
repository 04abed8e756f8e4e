"""A FHIR gateway on 127.0.0.1 with one flagged study, its score and review Task, and credentialed
reviewers (dr-1, dr-2 reviewers; sec-1 secondary reviewer), on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy import Engine, insert, select

from gateway.auth.issuer import mint_token
from gateway.auth.tokens import TokenValidator
from gateway.fhir_api.core import InteractionHooks, InteractionRecord
from gateway.listeners.http import build_http_app
from gateway.persistence.tables import audit_log, instances, scores, studies
from gateway.review_service import ReviewService
from gateway.reviewer_credentials import grant
from gateway.settings import AuthSettings, HttpSettings, Settings, StorageSettings
from tests.unit.fhir.samples import STUDY_UID, gateway_engine, score, study

FHIR_JSON = "application/fhir+json"
BASE = "http://127.0.0.1:8080/fhir"
REVIEWERS = {
    "Practitioner/dr-1": ["reviewer"],
    "Practitioner/dr-2": ["reviewer"],
    "Practitioner/sec-1": ["secondary-reviewer"],
}


@dataclass
class FhirGateway:
    """The running app, its database and helpers to act as each kind of caller."""

    client: TestClient[Any, Any]
    engine: Engine
    settings: Settings
    review: ReviewService
    task_id: str
    records: list[InteractionRecord] = field(default_factory=list)

    def token(self, role: str = "reviewer", user: str = "Practitioner/dr-1", **kw: Any) -> str:
        return mint_token(self.settings, role=role, user=user, **kw)

    def auth(self, token: str | None = None, **headers: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token or self.token()}", **headers}

    async def get(self, path: str, token: str | None = None, status: int = 200) -> Any:
        response = await self.client.get(f"/fhir/{path}", headers=self.auth(token))
        assert response.status == status, await response.text()
        return await response.json(content_type=None)

    async def read_task(self, task_id: str | None = None) -> tuple[dict[str, Any], str]:
        response = await self.client.get(
            f"/fhir/Task/{task_id or self.task_id}", headers=self.auth()
        )
        assert response.status == 200, await response.text()
        return await response.json(content_type=FHIR_JSON), response.headers["ETag"]

    async def put_task(
        self, body: dict[str, Any], etag: str | None, token: str | None = None
    ) -> Any:
        headers = self.auth(token)
        if etag is not None:
            headers["If-Match"] = etag
        return await self.client.put(f"/fhir/Task/{body['id']}", json=body, headers=headers)

    def audit(self, resource_type: str) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(audit_log.c.resource)
                .where(audit_log.c.resource_type == resource_type)
                .order_by(audit_log.c.seq)
            ).scalars()
            return [json.loads(r) for r in rows]

    def events(self, pipeline_event: str) -> list[dict[str, Any]]:
        return [
            e for e in self.audit("AuditEvent")
            if any(d.get("valueString") == pipeline_event
                   for ent in e.get("entity", []) for d in ent.get("detail", []))
        ]  # fmt: skip


def study_row(
    uid: str = STUDY_UID, patient: str = "pat-1", encounter: str = "enc-1"
) -> dict[str, Any]:
    """A scored study row."""
    now = datetime.now(UTC)
    return {
        "study_instance_uid": uid, "patient_id": patient, "patient_name": "Doe^Jane",
        "accession_number": f"ACC-{uid[-3:]}", "encounter_id": encounter, "modality": "CR",
        "state": "scored", "instance_count": 1, "first_received_at": now,
        "last_received_at": now, "stable_due_at": now, "score_generation": 1, "updated_at": now,
    }  # fmt: skip


def instance_row(uid: str = STUDY_UID) -> dict[str, Any]:
    """One stored CR instance of the study."""
    return {
        "sop_instance_uid": f"{uid}.1.1", "version": 1,
        "sop_class_uid": "1.2.840.10008.5.1.4.1.1.1", "study_instance_uid": uid,
        "series_instance_uid": f"{uid}.1", "transfer_syntax_uid": "1.2.840.10008.1.2.1",
        "modality": "CR", "path": "/spool/x.dcm", "size": 10, "sha256": "ef" * 32,
        "calling_ae": "MODALITY", "received_at": datetime.now(UTC),
    }  # fmt: skip


def score_row(uid: str = STUDY_UID, value: float = 0.91) -> dict[str, Any]:
    """The stored score of the study."""
    return {
        "study_instance_uid": uid, "use_case": "cxr-pneumothorax", "outcome": "scored",
        "score": value, "label": "pneumothorax", "model_name": "cxr-pneumothorax",
        "model_version": "3", "model_sha256": "ab" * 32,
        "thresholds": json.dumps({"review": 0.8, "secondary_review": 0.95}),
        "input_hash": "cd" * 32, "created_at": datetime.now(UTC),
    }  # fmt: skip


def make_settings(tmp_path: Path, **auth: Any) -> Settings:
    """Settings whose FHIR base is BASE (the token audience)."""
    return Settings(
        storage=StorageSettings(data_dir=tmp_path),
        http=HttpSettings(base_url="http://127.0.0.1:8080", max_body_bytes=256 * 1024),
        auth=AuthSettings(**auth),
    )


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    with gateway_engine(database_url) as engine:
        yield engine


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path)


def seed(engine: Engine, review: ReviewService, value: float = 0.91) -> str:
    """Study, instance, score, credentials and the review Task; returns the Task id."""
    now = datetime.now(UTC)
    with engine.begin() as conn:
        conn.execute(insert(studies).values(study_row()))
        conn.execute(insert(instances).values(instance_row()))
        conn.execute(insert(scores).values(score_row(value=value)))
        task = review.create_review_task(conn, study(), score(value))
        for who, roles in REVIEWERS.items():
            grant(conn, practitioner=who, roles=roles, valid_until=now + timedelta(days=30),
                  granted_by="Practitioner/admin", now=now)  # fmt: skip
    return str(task["id"])


@pytest.fixture
async def fhir(engine: Engine, settings: Settings) -> AsyncIterator[FhirGateway]:
    review = ReviewService(engine, settings)
    task_id = seed(engine, review)
    records: list[InteractionRecord] = []
    app = build_http_app(
        settings, engine, review, TokenValidator(settings), lambda: {"status": "ready"},
        InteractionHooks([records.append]),
    )  # fmt: skip
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        yield FhirGateway(client, engine, settings, review, task_id, records)
