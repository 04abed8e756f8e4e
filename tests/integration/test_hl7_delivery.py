"""OMI^O23 over real MLLP sockets to a listener built on `hl7.mllp`, as a RIS would answer."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hl7.mllp import start_hl7_server
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message
from sqlalchemy import Engine

from adapters.worklist.hl7_messages import build_omi_o23, new_control_id
from adapters.worklist.mllp import MllpWorklistUpdater
from gateway.audit.trail import ensure_head
from gateway.domain.errors import DeliveryFailed, DeliveryRefused
from gateway.domain.model import Actor
from gateway.domain.priority import Priority
from gateway.outbox import DEAD, DELIVERED, OutboxDispatcher, enqueue, list_rows
from gateway.persistence.db import make_engine
from gateway.persistence.tables import metadata
from gateway.ports import WorklistMessage
from gateway.settings import WorklistSettings
from tests.conftest import free_port

pytestmark = pytest.mark.integration

HOST = "127.0.0.1"
TIMEOUT = 2.0
REASONS = {"AE": "|busy", "AR": "|unknown order"}  # MSA-3 text


@dataclass
class FakeRis:
    """An MLLP listener that ACKs AA, or answers as `mode` says: AE, AR, drop, silent, wrong-id."""

    mode: str = "AA"
    received: list[str] = field(default_factory=list)
    port: int = 0
    _ack_ids: Iterator[int] = field(default_factory=itertools.count)
    _handlers: set[asyncio.Task[Any]] = field(default_factory=set)

    async def handle(self, reader: Any, writer: Any) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            await self._answer(reader, writer)
        except asyncio.IncompleteReadError:
            pass  # the client left (readiness probes connect and close)
        finally:
            writer.close()

    async def _answer(self, reader: Any, writer: Any) -> None:
        while True:
            message = await reader.readmessage()
            self.received.append(str(message))
            if self.mode == "drop":
                return
            if self.mode == "silent":
                await reader.read()  # hold the connection until the client gives up
                return
            code = self.mode if self.mode in {"AE", "AR"} else "AA"
            ack = message.create_ack(code, message_id=f"ACK{next(self._ack_ids)}")
            if self.mode == "wrong-id":
                ack.segment("MSA")[2] = "SOMEONE-ELSE"
            text = str(ack).rstrip("\r") + REASONS.get(code, "")
            writer.writeblock(text.encode("utf-8"))
            await writer.drain()

    async def close(self) -> None:
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)


async def _wait_until_listening(port: int) -> None:
    async with asyncio.timeout(10):
        while True:
            try:
                _, writer = await asyncio.open_connection(HOST, port)
            except OSError:
                await asyncio.sleep(0.02)
                continue
            writer.close()
            await writer.wait_closed()
            return


@pytest.fixture
async def ris() -> AsyncIterator[FakeRis]:
    """A running listener on a free port of 127.0.0.1, stopped after the test."""
    peer = FakeRis()
    server = await start_hl7_server(peer.handle, HOST, 0, encoding="utf-8")
    peer.port = int(server.sockets[0].getsockname()[1])
    await _wait_until_listening(peer.port)
    try:
        yield peer
    finally:
        server.close()
        await peer.close()
        await server.wait_closed()


def _omi(control_id: str, name: str = "Müller^Jörg") -> str:
    return build_omi_o23(
        control_id=control_id,
        sending_app="HITLGW",
        sending_facility="HOSP",
        receiving_app="RIS",
        receiving_facility="HOSP",
        patient_id="PAT-7",
        patient_name=name,
        accession_number="ACC-7",
        placer_order="PL-7",
        filler_order="FI-7",
        study_instance_uid="1.2.826.0.1.3680043.8.498.7",
        priority=Priority.STAT,
        when=datetime.now(UTC),
    )


def _message(payload: str, outbox_id: int = 1) -> WorklistMessage:
    return WorklistMessage(outbox_id, f"key-{outbox_id}", "hl7", "hl7-omi-o23", payload)


async def test_accepted_message_returns_the_ack_id(ris: FakeRis) -> None:
    control_id = new_control_id()
    updater = MllpWorklistUpdater(HOST, ris.port, timeout=TIMEOUT)

    assert await updater.deliver(_message(_omi(control_id))) == "ACK0"

    (received,) = ris.received
    parsed = parse_message(received, validation_level=VALIDATION_LEVEL.STRICT)
    parsed.validate()
    assert parsed.msh.msh_10.to_er7() == control_id
    assert parsed.omi_o23_patient.pid.pid_5.to_er7() == "Müller^Jörg"


@pytest.mark.parametrize(
    ("mode", "error", "text"),
    [
        ("AE", DeliveryFailed, "AE from .*busy"),
        ("AR", DeliveryRefused, "AR from .*unknown order"),
        ("drop", DeliveryFailed, "closed the connection"),
        ("wrong-id", DeliveryFailed, "is for 'SOMEONE-ELSE'"),
    ],
)
async def test_negative_answers_become_gateway_errors(
    ris: FakeRis, mode: str, error: type[Exception], text: str
) -> None:
    ris.mode = mode
    updater = MllpWorklistUpdater(HOST, ris.port, timeout=TIMEOUT)
    with pytest.raises(error, match=text):
        await updater.deliver(_message(_omi(new_control_id())))
    assert len(ris.received) == 1


async def test_a_silent_peer_times_out(ris: FakeRis) -> None:
    ris.mode = "silent"
    updater = MllpWorklistUpdater(HOST, ris.port, timeout=0.3)
    with pytest.raises(DeliveryFailed, match="no ACK"):
        await updater.deliver(_message(_omi(new_control_id())))


async def test_a_listener_that_is_down_is_a_transient_failure() -> None:
    updater = MllpWorklistUpdater(HOST, free_port(), timeout=TIMEOUT)
    with pytest.raises(DeliveryFailed, match="cannot connect"):
        await updater.deliver(_message(_omi(new_control_id())))


async def test_a_payload_without_control_id_is_refused_without_sending(ris: FakeRis) -> None:
    updater = MllpWorklistUpdater(HOST, ris.port, timeout=TIMEOUT)
    with pytest.raises(DeliveryRefused):
        await updater.deliver(_message("not hl7"))
    assert ris.received == []


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    """An embedded store with the gateway's tables and audit chain."""
    eng = make_engine(f"sqlite:///{tmp_path / 'gateway.db'}")
    metadata.create_all(eng)
    with eng.begin() as conn:
        ensure_head(conn)
    yield eng
    eng.dispose()


async def test_outbox_delivers_through_mllp_and_dead_letters_a_reject(
    ris: FakeRis, engine: Engine
) -> None:
    actor = Actor(reference="Practitioner/r1")
    for key in ("approve-1", "override-2"):
        with engine.begin() as conn:
            enqueue(
                conn,
                destination="hl7",
                idempotency_key=key,
                study_uid="1.2.826.0.1.3680043.8.498.7",
                kind="hl7-omi-o23",
                payload=_omi(new_control_id()),
                actor=actor,
                patient_id="PAT-7",
            )
    updater = MllpWorklistUpdater(HOST, ris.port, timeout=TIMEOUT)
    dispatcher = OutboxDispatcher(engine, {"hl7": updater}, WorklistSettings(), "w1")

    assert await dispatcher.run_once() == 1
    ris.mode = "AR"
    assert await dispatcher.run_once() == 1

    first, second = list_rows(engine)
    assert (first.state, second.state) == (DELIVERED, DEAD)
    assert "unknown order" in second.last_error
    assert len(ris.received) == 2
