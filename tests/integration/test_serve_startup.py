"""`serve` opens its ports only when it is ready: a health check that answers means DICOM is on.

Supervisors and tests take the first 200 from `/healthz` as the signal to send; the start-up
rehearsal of the record path (`gateway/ingest_rehearsal.py`) must therefore be over before either
port opens, however long it takes on a loaded machine.
"""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway import app as gateway_app
from gateway.persistence.db import make_engine
from gateway.persistence.migrate import upgrade
from gateway.settings import load_settings
from tests.conftest import free_port

pytestmark = pytest.mark.integration


async def test_the_dicom_port_accepts_as_soon_as_health_answers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dicom_port, http_port = free_port(), free_port()
    settings = load_settings(
        environ={
            "HITL_GATEWAY_STORAGE__DATA_DIR": str(tmp_path / "data"),
            "HITL_GATEWAY_DATABASE__URL": f"sqlite:///{tmp_path}/gw.db",
            "HITL_GATEWAY_MLFLOW__TRACKING_URI": f"sqlite:///{tmp_path}/registry.db",
            "HITL_GATEWAY_DICOM__HOST": "127.0.0.1",
            "HITL_GATEWAY_DICOM__PORT": str(dicom_port),
            "HITL_GATEWAY_HTTP__HOST": "127.0.0.1",
            "HITL_GATEWAY_HTTP__PORT": str(http_port),
        }
    )
    engine = make_engine(settings.database_url)
    upgrade(engine)
    engine.dispose()
    rehearse = gateway_app._rehearse_ingest

    def slow_rehearsal(*args: Any) -> None:
        time.sleep(1.5)  # a loaded machine
        rehearse(*args)

    monkeypatch.setattr(gateway_app, "_rehearse_ingest", slow_rehearsal)
    stop = asyncio.Event()
    serving = asyncio.create_task(gateway_app.serve(settings, stop=stop))
    try:
        async with aiohttp.ClientSession() as session:
            deadline = time.monotonic() + 60
            while True:
                assert not serving.done(), serving
                try:
                    async with session.get(f"http://127.0.0.1:{http_port}/healthz") as health:
                        if health.status == 200:
                            break
                except aiohttp.ClientConnectionError:
                    pass
                assert time.monotonic() < deadline, "the gateway never answered /healthz"
                await asyncio.sleep(0.02)
        # At once, without waiting: a modality that was told the gateway is up sends now.
        with socket.create_connection(("127.0.0.1", dicom_port), timeout=2):
            pass
    finally:
        stop.set()
        await asyncio.wait_for(serving, 60)
