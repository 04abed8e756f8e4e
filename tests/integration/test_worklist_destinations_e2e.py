"""One approval in the running gateway reaches four configured destinations, each in its format.

The gateway runs as its own process with `[[worklist.destinations]]` for an HL7 v2.3 RIS over
MLLP, a UPS-RS worklist manager, the EHR's FHIR server and a vendor webhook; the approval's
accession, patient and priority must arrive at each, and /metrics must count the deliveries.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import Engine

from gateway.domain.priority import PRIORITY_TABLE, Priority
from gateway.outbox import DELIVERED, list_rows
from gateway.persistence.db import make_engine
from tests.integration.test_worklist_faults import _http, _seed_review_task
from tests.peers.fhir_server import FhirServer
from tests.peers.gateway_process import GatewayProcess
from tests.peers.mllp_listener import MllpListener
from tests.peers.ups_rs_server import UpsRsServer
from tests.peers.webhook_receiver import WebhookReceiver
from tests.unit.fhir.samples import decision_body, study

pytestmark = pytest.mark.integration


def _wait(predicate: Callable[[], bool], timeout: float, what: str, gw: GatewayProcess) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}\n{gw.log()[-4000:]}")
        time.sleep(0.05)


def _all_delivered(engine: Engine, count: int) -> bool:
    rows = list_rows(engine)
    return len(rows) == count and all(r.state == DELIVERED for r in rows)


def test_one_approval_reaches_every_configured_destination(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'gateway.db'}"
    secret = tmp_path / "vendor.key"
    secret.write_text("vendor-secret\n")
    scrape = tmp_path / "scrape.token"
    scrape.write_text("scrape-123\n")
    ris, ups, ehr = MllpListener().start(), UpsRsServer().start(), FhirServer().start()
    vendor = WebhookReceiver("vendor-secret").start()
    uid = study().study_instance_uid
    ups.add_workitem("2.25.61", patient_id="pat-1", accession="ACC-1", study_uid=uid)
    ehr.add_order("sr-1", accession="ACC-1", patient_id="pat-1", system="urn:oid:1.2.3")
    destinations = [
        {
            "name": "ris",
            "kind": "hl7-mllp",
            "host": "127.0.0.1",
            "port": ris.port,
            "message": "ORM^O01",
        },
        {"name": "ups", "kind": "ups-rs", "url": ups.url},
        {
            "name": "ehr",
            "kind": "fhir-service-request",
            "url": ehr.url,
            "accession_system": "urn:oid:1.2.3",
        },
        {"name": "vendor", "kind": "webhook", "url": vendor.url + "/", "secret_file": str(secret)},
    ]
    gw = GatewayProcess(
        tmp_path / "data",
        url,
        {
            "HITL_GATEWAY_MLFLOW__TRACKING_URI": f"sqlite:///{tmp_path / 'no-models.db'}",
            "HITL_GATEWAY_WORKLIST__DESTINATIONS": json.dumps(destinations),
            "HITL_GATEWAY_WORKLIST__POLL_SECONDS": "0.05",
            "HITL_GATEWAY_HTTP__METRICS_TOKEN_FILE": str(scrape),
        },
    )
    gw.data_dir.mkdir(parents=True)
    gw.cli("db", "upgrade")
    task_id = _seed_review_task(url)
    engine = make_engine(url)
    try:
        gw.start()
        token = gw.cli("token", "--role", "reviewer", "--user", "Practitioner/dr-1").strip()
        _, headers, task = _http("GET", f"{gw.base_url}/fhir/Task/{task_id}", token)
        status, _, _ = _http(
            "PUT",
            f"{gw.base_url}/fhir/Task/{task_id}",
            token,
            decision_body(task),
            If_Match=headers["ETag"],
        )
        assert status == 200
        _wait(
            lambda: _all_delivered(engine, 4),
            30,
            "four deliveries",
            gw,
        )
        request = urllib.request.Request(f"{gw.base_url}/metrics")  # noqa: S310
        request.add_header("Authorization", "Bearer scrape-123")
        with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310
            metrics = response.read().decode()
    finally:
        gw.stop()
        engine.dispose()
        for peer in (ris, ups, ehr, vendor):
            peer.stop()

    codes = PRIORITY_TABLE[Priority(task["priority"])]
    (orm,) = ris.wait_for_messages(1, timeout=1)
    assert str(orm.segment("MSH")[9]) == "ORM^O01"
    assert str(orm.segment("PID")[3]) == "pat-1"
    assert str(orm.segment("OBR")[18]) == "ACC-1"
    assert str(orm.segment("ORC")[7]).split("^")[5] == codes.hl7_0027
    assert ups.state_of("2.25.61") == ("SCHEDULED", codes.ups)
    assert ehr.orders["sr-1"]["priority"] == codes.fhir.value
    (document,) = vendor.received
    assert (document["accession_number"], document["patient_id"]) == ("ACC-1", "pat-1")
    assert document["priority"] == codes.fhir.value
    for name in ("ris", "ups", "ehr", "vendor"):
        line = f'hitl_worklist_attempts_total{{destination="{name}",outcome="delivered"}} 1'
        assert line in metrics
        assert f'hitl_outbox_rows{{destination="{name}",state="delivered"}} 1' in metrics
