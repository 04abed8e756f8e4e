"""Guaranteed delivery under faults: RIS down then back, a NAK, and SIGKILL after the commit.

Every test uses the real MLLP listener on 127.0.0.1; the last one runs the gateway as a separate
process and kills it with SIGKILL between the decision's commit and its delivery.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, insert, select

from adapters.worklist.hl7_render import Hl7Profile, control_id_for
from adapters.worklist.mllp import MllpWorklistUpdater
from adapters.worklist.webhook import WebhookWorklistUpdater
from fhir_mapping.audit_event import DETAIL_EVENT, details_of
from gateway.cli import main as cli_main
from gateway.domain.model import Actor
from gateway.domain.priority import Priority
from gateway.domain.worklist import PRIORITY_CHANGE_KIND, PriorityChange
from gateway.metrics import Metrics
from gateway.outbox import (
    ALERT_DESTINATION,
    DEAD,
    DELIVERED,
    OutboxDispatcher,
    enqueue,
    list_rows,
)
from gateway.persistence.db import make_engine
from gateway.persistence.tables import audit_log, studies
from gateway.ports import WorklistUpdater
from gateway.settings import WorklistSettings
from tests.conftest import free_port
from tests.peers.gateway_process import GatewayProcess
from tests.peers.mllp_listener import MllpListener
from tests.peers.webhook_receiver import WebhookReceiver
from tests.unit.fhir.samples import decision_body, gateway_engine, score, study

pytestmark = pytest.mark.integration

FAST = WorklistSettings(
    backoff_seconds=0.05, max_backoff_seconds=0.2, poll_seconds=0.02, max_attempts=1000
)
REVIEWER = Actor(reference="Practitioner/r1", roles=("reviewer",))


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    """Both databases, with the gateway's tables and audit chain."""
    with gateway_engine(database_url) as eng:
        yield eng


def _queue(engine: Engine, key: str, study_uid: str, priority: Priority) -> None:
    change = PriorityChange(
        idempotency_key=key,
        study_instance_uid=study_uid,
        accession_number=f"ACC-{study_uid[-1]}",
        patient_id=f"PAT-{study_uid[-1]}",
        priority=priority,
        requested_at=datetime.now(UTC),
    )
    with engine.begin() as conn:
        enqueue(
            conn,
            destination="hl7",
            idempotency_key=key,
            study_uid=study_uid,
            kind=PRIORITY_CHANGE_KIND,
            payload=change.to_json(),
            actor=REVIEWER,
            patient_id=change.patient_id,
        )


async def _until(predicate: Callable[[], bool], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def _control_ids(listener: MllpListener) -> list[str]:
    return [str(m.segment("MSH")[10]) for m in listener.wait_for_messages(0, 0)]


async def test_ris_down_then_back_gets_each_change_once_in_order(engine: Engine) -> None:
    port = free_port()  # the RIS's port, with nothing listening yet
    changes = [
        ("task-a:2", "1.2.3.1", Priority.URGENT),
        ("task-b:2", "1.2.3.2", Priority.STAT),
        ("task-a:3", "1.2.3.1", Priority.STAT),
        ("task-a:4", "1.2.3.1", Priority.ROUTINE),
    ]
    for key, study_uid, priority in changes:
        _queue(engine, key, study_uid, priority)
    updater = MllpWorklistUpdater("127.0.0.1", port, timeout=1, profile=Hl7Profile())
    dispatcher = OutboxDispatcher(engine, {"hl7": updater}, FAST, "w1")
    stop = asyncio.Event()
    running = asyncio.create_task(dispatcher.run_forever(stop))
    listener: MllpListener | None = None
    try:
        # Down for several retry intervals: the head of each study's queue keeps failing.
        await _until(
            lambda: all(
                r.attempts >= 4
                for r in list_rows(engine)
                if r.idempotency_key in {"task-a:2", "task-b:2"}
            ),
            30,
            "several failed attempts",
        )
        assert all(
            r.attempts == 0
            for r in list_rows(engine)
            if r.idempotency_key in {"task-a:3", "task-a:4"}
        )  # later changes wait behind the first
        listener = MllpListener(port=port).start()
        await _until(
            lambda: all(r.state == DELIVERED for r in list_rows(engine)), 30, "all delivered"
        )
        assert await dispatcher.run_once() == 0  # nothing left to send again
    finally:
        stop.set()
        await running
        if listener is not None:
            listener.stop()
    received = _control_ids(listener)
    assert sorted(received) == sorted(control_id_for(k) for k, _, _ in changes)  # once each
    study_a = [control_id_for(k) for k in ("task-a:2", "task-a:3", "task-a:4")]
    assert [c for c in received if c in study_a] == study_a  # in decision order
    tq1 = [
        str(m.segment("TQ1")[9]).split("^")[0]
        for m in listener.wait_for_messages(0, 0)
        if str(m.segment("MSH")[10]) in study_a
    ]
    assert tq1 == ["T", "S", "R"]


def _events(engine: Engine) -> list[tuple[str, str]]:
    with engine.connect() as conn:
        docs = conn.execute(
            select(audit_log.c.resource)
            .where(audit_log.c.resource_type == "AuditEvent")
            .order_by(audit_log.c.seq)
        ).scalars()
        return [
            (details_of(d).get(DETAIL_EVENT, ""), str(d.get("outcome", "")))
            for d in map(json.loads, docs)
        ]


async def test_a_nak_is_dead_lettered_alerted_and_replayed_from_the_cli(
    engine: Engine, database_url: str, tmp_path: Path
) -> None:
    listener = MllpListener(mode="AR").start()
    sink = WebhookReceiver("alert-key").start()
    metrics = Metrics()
    updaters: dict[str, WorklistUpdater] = {
        "hl7": MllpWorklistUpdater("127.0.0.1", listener.port, timeout=2),
        ALERT_DESTINATION: WebhookWorklistUpdater(sink.url + "/", "alert-key", timeout=2),
    }
    dispatcher = OutboxDispatcher(
        engine, updaters, FAST, "w1", metrics=metrics, alert_destination=ALERT_DESTINATION
    )
    try:
        _queue(engine, "task-n:2", "1.2.3.5", Priority.STAT)
        await dispatcher.run_once()
        (dead,) = list_rows(engine, DEAD)
        assert dead.last_error.startswith("AR from 127.0.0.1")
        assert ("worklist-dead-lettered", "8") in _events(engine)
        rendered = metrics.render()
        assert 'hitl_worklist_dead_letters_total{destination="hl7"} 1' in rendered

        await dispatcher.run_once()  # the alert row goes to the alert webhook
        (alert,) = sink.wait_for(1, timeout=10)
        assert (alert["outbox_id"], alert["destination"]) == (dead.id, "hl7")
        assert alert["reason"] == "refused by the peer"
        assert alert["idempotency_key"] == "task-n:2"

        listener.mode = "AA"
        config = tmp_path / "gateway.toml"
        config.write_text(
            f'[database]\nurl = "{database_url}"\n[storage]\ndata_dir = "{tmp_path}"\n'
        )
        assert cli_main(["--config", str(config), "outbox", "replay", str(dead.id)]) == 0
        assert cli_main(["--config", str(config), "outbox", "replay", str(dead.id)]) == 1
        await dispatcher.run_once()
        assert [r.state for r in list_rows(engine) if r.id == dead.id] == [DELIVERED]
        ids = _control_ids(listener)
        assert ids == [control_id_for("task-n:2")] * 2  # the NAKed send and the replay
        assert len(sink.received) == 1  # the replay raised no new alert
    finally:
        listener.stop()
        sink.stop()


def _seed_review_task(url: str) -> str:
    from gateway.review_service import ReviewService
    from gateway.reviewer_credentials import grant
    from gateway.settings import Settings

    now = datetime.now(UTC)
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(
                insert(studies).values(
                    study_instance_uid=study().study_instance_uid,
                    patient_id="pat-1",
                    patient_name="Doe^Jane",
                    accession_number="ACC-1",
                    encounter_id="enc-1",
                    modality="CR",
                    state="scored",
                    instance_count=1,
                    first_received_at=now,
                    last_received_at=now,
                    stable_due_at=now,
                    score_generation=1,
                    updated_at=now,
                )
            )
            task = ReviewService(engine, Settings()).create_review_task(conn, study(), score())
            grant(
                conn,
                practitioner="Practitioner/dr-1",
                roles=["reviewer"],
                valid_until=now + timedelta(days=30),
                granted_by="Practitioner/admin",
                now=now,
            )
        return str(task["id"])
    finally:
        engine.dispose()


def _http(method: str, url: str, token: str, body: Any = None, **headers: str) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)  # noqa: S310
    request.add_header("Authorization", f"Bearer {token}")
    request.add_header("Content-Type", "application/fhir+json")
    for key, value in headers.items():
        request.add_header(key.replace("_", "-"), value)
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
        return response.status, dict(response.headers), json.loads(response.read())


def _wait(predicate: Callable[[], bool], timeout: float, what: str, gw: GatewayProcess) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}\n{gw.log()[-4000:]}")
        time.sleep(0.05)


def test_sigkill_after_the_commit_delivers_once_after_restart(
    tmp_path: Path, database_url: str
) -> None:
    url = database_url
    ris_port = free_port()
    gw = GatewayProcess(
        tmp_path / "data",
        url,
        {
            "HITL_GATEWAY_MLFLOW__TRACKING_URI": f"sqlite:///{tmp_path / 'no-models.db'}",
            "HITL_GATEWAY_WORKLIST__HL7_HOST": "127.0.0.1",
            "HITL_GATEWAY_WORKLIST__HL7_PORT": str(ris_port),
            "HITL_GATEWAY_WORKLIST__POLL_SECONDS": "0.05",
            "HITL_GATEWAY_WORKLIST__BACKOFF_SECONDS": "0.1",
            "HITL_GATEWAY_WORKLIST__MAX_BACKOFF_SECONDS": "0.3",
            "HITL_GATEWAY_WORKLIST__ACK_TIMEOUT_SECONDS": "1",
        },
    )
    gw.data_dir.mkdir(parents=True)
    gw.cli("db", "upgrade")
    task_id = _seed_review_task(url)
    engine = make_engine(url)
    listener: MllpListener | None = None
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
        assert status == 200  # the decision and its outbox row are committed
        _wait(lambda: any(r.attempts >= 2 for r in list_rows(engine)), 30, "failed sends", gw)
        gw.kill()  # SIGKILL while the RIS is still down
        (row,) = list_rows(engine)
        assert row.state != DELIVERED

        listener = MllpListener(port=ris_port).start()
        gw.start()
        _wait(lambda: list_rows(engine)[0].state == DELIVERED, 30, "delivery after restart", gw)
        assert gw.stop() == 0
        messages = listener.wait_for_messages(1, timeout=1)
        assert [str(m.segment("MSH")[10]) for m in messages] == [
            control_id_for(row.idempotency_key)
        ]
        assert str(messages[0].segment("PID")[3]) == "pat-1"
        assert str(messages[0].segment("IPC")[1]) == "ACC-1"
    finally:
        gw.kill()
        engine.dispose()
        if listener is not None:
            listener.stop()
