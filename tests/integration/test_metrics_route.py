"""GET /metrics: Prometheus text for an admin token or the scrape token, 401/403 otherwise."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gateway.auth.tokens import TokenValidator, mint_token
from gateway.listeners.http import VALIDATOR, error_boundary
from gateway.listeners.metrics_route import add_metrics_route
from gateway.metrics import CONTENT_TYPE, Metrics
from gateway.settings import HttpSettings, Settings, StorageSettings

pytestmark = pytest.mark.integration

SCRAPE = "scrape-token-123"


@pytest.fixture
async def client(
    tmp_path: Path,
) -> AsyncIterator[tuple[TestClient[web.Request, web.Application], Settings]]:
    settings = Settings(
        storage=StorageSettings(data_dir=tmp_path),
        http=HttpSettings(base_url="http://127.0.0.1:8080"),
    )
    metrics = Metrics()
    metrics.counter("hitl_worklist_dead_letters_total", "Dead letters.").inc(destination="hl7")
    metrics.gauge("hitl_outbox_rows", "Rows.", lambda: [({"state": "dead"}, 1.0)])
    app = web.Application(middlewares=[error_boundary])
    app[VALIDATOR] = TokenValidator(settings)
    add_metrics_route(app, metrics, SCRAPE)
    async with TestClient(TestServer(app, host="127.0.0.1")) as test_client:
        yield test_client, settings


async def test_metrics_need_admin_or_the_scrape_token(
    client: tuple[TestClient[web.Request, web.Application], Settings],
) -> None:
    http, settings = client
    admin = mint_token(settings, role="admin", user="Practitioner/it-1")
    reviewer = mint_token(settings, role="reviewer", user="Practitioner/dr-1")

    ok = await http.get("/metrics", headers={"Authorization": f"Bearer {admin}"})
    assert ok.status == 200
    assert ok.headers["Content-Type"] == CONTENT_TYPE
    text = await ok.text()
    assert 'hitl_worklist_dead_letters_total{destination="hl7"} 1' in text
    assert "# TYPE hitl_outbox_rows gauge" in text
    assert 'hitl_outbox_rows{state="dead"} 1' in text

    scraped = await http.get("/metrics", headers={"Authorization": f"Bearer {SCRAPE}"})
    assert scraped.status == 200
    assert (await http.get("/metrics")).status == 401
    forbidden = await http.get("/metrics", headers={"Authorization": f"Bearer {reviewer}"})
    assert forbidden.status == 403
    wrong = await http.get("/metrics", headers={"Authorization": "Bearer nope"})
    assert wrong.status == 401
