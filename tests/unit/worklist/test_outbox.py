"""The outbox and its dispatcher on SQLite and PostgreSQL, delivering to the in-memory twin."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, insert, select, update
from sqlalchemy.exc import IntegrityError

from adapters.worklist.memory import MemoryWorklistUpdater
from fhir_mapping.audit_event import DETAIL_EVENT, details_of
from gateway.audit.trail import audit_event_patient, ensure_head
from gateway.audit.verify import verify_chain
from gateway.domain.errors import IllegalTransition, NotFound
from gateway.domain.model import Actor
from gateway.outbox import (
    DEAD,
    DELIVERED,
    PENDING,
    OutboxDispatcher,
    backoff_delay,
    enqueue,
    list_rows,
    replay,
)
from gateway.persistence.db import make_engine
from gateway.persistence.tables import audit_log, metadata, outbox, studies
from gateway.ports import WorklistMessage
from gateway.settings import WorklistSettings

T0 = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)
REVIEWER = Actor(reference="Practitioner/r1", roles=("reviewer",))
SETTINGS = WorklistSettings(max_attempts=3, backoff_seconds=2.0, max_backoff_seconds=60.0)
LATER = timedelta(seconds=SETTINGS.max_backoff_seconds + 1)


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    """A migrated-equivalent schema with an initialised audit chain."""
    eng = make_engine(database_url)
    metadata.create_all(eng)
    with eng.begin() as conn:
        ensure_head(conn)
    yield eng
    eng.dispose()


def _enqueue(
    engine: Engine, key: str, study: str = "1.2.3", destination: str = "hl7"
) -> int | None:
    with engine.begin() as conn:
        return enqueue(
            conn,
            destination=destination,
            idempotency_key=key,
            study_uid=study,
            kind="hl7-omi-o23",
            payload=f"payload {key}",
            actor=REVIEWER,
            patient_id="PAT1",
            now=T0,
        )


def _dispatcher(
    engine: Engine, twin: MemoryWorklistUpdater, worker: str = "w1", batch_size: int = 10
) -> OutboxDispatcher:
    return OutboxDispatcher(
        engine,
        {"hl7": twin},
        SETTINGS,
        worker,
        clock=lambda: T0,
        rand=lambda: 0.0,
        batch_size=batch_size,
    )


def _audited(engine: Engine) -> list[dict[str, str]]:
    with engine.connect() as conn:
        texts = conn.execute(select(audit_log.c.resource).order_by(audit_log.c.seq)).scalars()
        return [details_of(json.loads(t)) for t in texts]


def _patients(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        texts = conn.execute(select(audit_log.c.resource).order_by(audit_log.c.seq)).scalars()
        return [audit_event_patient(json.loads(t)) for t in texts]


def _events(engine: Engine) -> list[str]:
    return [d[DETAIL_EVENT] for d in _audited(engine)]


def _keys(messages: list[WorklistMessage]) -> list[str]:
    return [m.idempotency_key for m in messages]


@pytest.mark.parametrize(
    ("attempts", "expected"),
    [(0, 2.0), (1, 4.0), (3, 16.0), (5, 60.0), (10_000, 60.0)],
)
def test_backoff_doubles_up_to_the_cap(attempts: int, expected: float) -> None:
    assert backoff_delay(attempts, SETTINGS, lambda: 0.0) == expected
    jittered = backoff_delay(attempts, SETTINGS, lambda: 0.999)
    assert 0.8 * expected <= jittered < expected


def test_enqueue_is_idempotent_per_destination_and_key(engine: Engine) -> None:
    first = _enqueue(engine, "k1")
    assert first is not None
    assert _enqueue(engine, "k1") is None
    assert _enqueue(engine, "k1", destination="ups") is not None
    assert [r.idempotency_key for r in list_rows(engine)] == ["k1", "k1"]
    assert _events(engine) == ["worklist-queued", "worklist-queued"]
    assert _audited(engine)[0]["outbox-id"] == str(first)


def test_enqueue_rolls_back_with_the_callers_transaction(engine: Engine) -> None:
    class StateChangeError(Exception):
        pass

    def change_state_and_fail() -> None:
        with engine.begin() as conn:
            enqueue(
                conn,
                destination="hl7",
                idempotency_key="k1",
                study_uid="1.2.3",
                kind="hl7-omi-o23",
                payload="p",
                actor=REVIEWER,
                patient_id="PAT1",
                now=T0,
            )
            raise StateChangeError

    with pytest.raises(StateChangeError):
        change_state_and_fail()
    assert list_rows(engine) == []
    assert _events(engine) == []


async def test_delivery_settles_the_row_and_is_audited(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(
            insert(studies).values(
                study_instance_uid="1.2.3",
                patient_id="PAT1",
                state="scored",
                first_received_at=T0,
                last_received_at=T0,
                stable_due_at=T0,
                updated_at=T0,
            )
        )
    _enqueue(engine, "k1")
    twin = MemoryWorklistUpdater()

    assert await _dispatcher(engine, twin).run_once(T0) == 1
    assert await _dispatcher(engine, twin).run_once(T0) == 0

    (row,) = list_rows(engine)
    assert (row.state, row.attempts, row.delivered_at) == (DELIVERED, 0, T0)
    assert _keys(twin.delivered) == ["k1"]
    assert twin.delivered[0].payload == "payload k1"
    assert _events(engine) == ["worklist-queued", "worklist-delivered"]
    assert _audited(engine)[1]["acknowledgement-id"] == "ack-1"
    assert _patients(engine) == ["PAT1", "PAT1"]  # the dispatcher finds it via the study


async def test_a_later_change_never_overtakes_an_earlier_one(engine: Engine) -> None:
    _enqueue(engine, "s1-first", study="1.1")
    _enqueue(engine, "s1-second", study="1.1")
    _enqueue(engine, "s2-only", study="2.2")
    twin = MemoryWorklistUpdater()
    twin.fail_next()
    dispatcher = _dispatcher(engine, twin)

    assert await dispatcher.run_once(T0) == 2  # s1-first fails, s2-only goes through
    assert await dispatcher.run_once(T0) == 0  # s1-first is backing off; s1-second waits
    assert await dispatcher.run_once(T0 + LATER) == 1
    assert await dispatcher.run_once(T0 + LATER) == 1

    assert _keys(twin.attempts) == ["s1-first", "s2-only", "s1-first", "s1-second"]
    assert _keys(twin.delivered) == ["s2-only", "s1-first", "s1-second"]


async def test_retry_with_backoff_then_success(engine: Engine) -> None:
    _enqueue(engine, "k1")
    twin = MemoryWorklistUpdater()
    twin.fail_next(2, reason="AE from ris: busy")
    dispatcher = _dispatcher(engine, twin)

    assert await dispatcher.run_once(T0) == 1
    (row,) = list_rows(engine)
    assert (row.state, row.attempts, row.last_error) == (PENDING, 1, "AE from ris: busy")
    assert row.next_attempt_at == T0 + timedelta(seconds=2)
    assert await dispatcher.run_once(T0 + timedelta(seconds=1)) == 0

    t1 = T0 + timedelta(seconds=2)
    assert await dispatcher.run_once(t1) == 1
    (row,) = list_rows(engine)
    assert (row.attempts, row.next_attempt_at) == (2, t1 + timedelta(seconds=4))

    assert await dispatcher.run_once(t1 + timedelta(seconds=4)) == 1
    (row,) = list_rows(engine)
    assert (row.state, row.attempts) == (DELIVERED, 2)
    assert _events(engine) == [
        "worklist-queued",
        "worklist-attempted",
        "worklist-attempted",
        "worklist-delivered",
    ]
    assert _audited(engine)[1]["error"] == "AE from ris: busy"


async def test_dead_letter_after_max_attempts_unblocks_the_next_change(engine: Engine) -> None:
    _enqueue(engine, "k1")
    _enqueue(engine, "k2")
    twin = MemoryWorklistUpdater()
    twin.fail_next(SETTINGS.max_attempts)
    dispatcher = _dispatcher(engine, twin)

    now = T0
    for _ in range(SETTINGS.max_attempts):
        assert await dispatcher.run_once(now) == 1
        now += LATER
    first, second = list_rows(engine)
    assert (first.state, first.attempts) == (DEAD, SETTINGS.max_attempts)
    assert second.state == PENDING
    events = _events(engine)
    assert events.count("worklist-attempted") == SETTINGS.max_attempts
    assert events[-1] == "worklist-dead-lettered"
    assert _audited(engine)[-1]["dead-letter-reason"] == "3 attempts failed"

    assert await dispatcher.run_once(now) == 1
    assert _keys(twin.delivered) == ["k2"]


async def test_a_refusal_is_dead_lettered_at_once(engine: Engine) -> None:
    _enqueue(engine, "k1")
    twin = MemoryWorklistUpdater()
    twin.refuse_next(reason="AR from ris: unknown order")

    assert await _dispatcher(engine, twin).run_once(T0) == 1

    (row,) = list_rows(engine, DEAD)
    assert (row.attempts, row.last_error) == (1, "AR from ris: unknown order")
    assert _events(engine)[-2:] == ["worklist-attempted", "worklist-dead-lettered"]
    assert _audited(engine)[-1]["dead-letter-reason"] == "refused by the peer"


async def test_an_updater_that_breaks_its_contract_still_gets_bounded_retries(
    engine: Engine,
) -> None:
    class Broken:
        async def deliver(self, message: WorklistMessage) -> str:
            raise RuntimeError("bug")

    _enqueue(engine, "k1")
    dispatcher = OutboxDispatcher(
        engine, {"hl7": Broken()}, SETTINGS, "w1", clock=lambda: T0, rand=lambda: 0.0
    )

    assert await dispatcher.run_once(T0) == 1
    (row,) = list_rows(engine)
    assert (row.state, row.attempts) == (PENDING, 1)
    assert "RuntimeError" in row.last_error


async def test_rows_for_unconfigured_destinations_are_left_alone(engine: Engine) -> None:
    _enqueue(engine, "k1", destination="ups")
    twin = MemoryWorklistUpdater()
    assert await _dispatcher(engine, twin).run_once(T0) == 0
    assert await OutboxDispatcher(engine, {}, SETTINGS, "w1").run_once(T0) == 0
    assert list_rows(engine)[0].state == PENDING


def test_dispatchers_racing_claim_each_row_once(engine: Engine) -> None:
    keys = [f"k{i}" for i in range(60)]
    for i, key in enumerate(keys):
        _enqueue(engine, key, study=f"1.{i}")
    twins = [MemoryWorklistUpdater() for _ in range(4)]
    dispatchers = [
        _dispatcher(engine, twin, f"w{i}", batch_size=20) for i, twin in enumerate(twins)
    ]
    start = threading.Barrier(len(dispatchers))

    def race(dispatcher: OutboxDispatcher) -> int:
        start.wait()  # every replica claims at the same moment
        return sum(asyncio.run(dispatcher.run_once(T0)) for _ in range(4))

    with ThreadPoolExecutor(len(dispatchers)) as pool:
        handled = list(pool.map(race, dispatchers))

    attempted = [key for twin in twins for key in _keys(twin.attempts)]
    assert sum(handled) == len(keys)
    assert sorted(attempted) == sorted(keys)
    assert {r.state for r in list_rows(engine)} == {DELIVERED}
    assert _events(engine).count("worklist-delivered") == len(keys)
    assert verify_chain(engine).ok


async def test_an_expired_lease_is_taken_over(engine: Engine) -> None:
    _enqueue(engine, "k1")
    with engine.begin() as conn:
        conn.execute(
            update(outbox).values(lease_owner="killed", lease_until=T0 + timedelta(seconds=30))
        )
    twin = MemoryWorklistUpdater()
    dispatcher = _dispatcher(engine, twin)

    assert await dispatcher.run_once(T0 + timedelta(seconds=29)) == 0
    assert await dispatcher.run_once(T0 + timedelta(seconds=31)) == 1
    assert _keys(twin.delivered) == ["k1"]


async def test_replay_puts_a_dead_row_back_in_the_queue(engine: Engine) -> None:
    outbox_id = _enqueue(engine, "k1")
    assert outbox_id is not None
    twin = MemoryWorklistUpdater()
    twin.refuse_next()
    dispatcher = _dispatcher(engine, twin)
    await dispatcher.run_once(T0)

    with pytest.raises(NotFound):
        replay(engine, outbox_id + 100)
    replay(engine, outbox_id, actor=Actor(reference="Practitioner/ops"), now=T0)
    with pytest.raises(IllegalTransition):
        replay(engine, outbox_id, now=T0)

    (row,) = list_rows(engine, PENDING)
    assert (row.attempts, row.next_attempt_at) == (0, T0)
    assert _audited(engine)[-1]["replay"] == "true"
    assert await dispatcher.run_once(T0) == 1
    assert list_rows(engine)[0].state == DELIVERED


async def test_replay_refuses_to_overwrite_a_newer_change(engine: Engine) -> None:
    old = _enqueue(engine, "old")
    assert old is not None
    twin = MemoryWorklistUpdater()
    twin.refuse_next()
    dispatcher = _dispatcher(engine, twin)
    await dispatcher.run_once(T0)
    _enqueue(engine, "new")
    await dispatcher.run_once(T0)

    with pytest.raises(IllegalTransition, match="newer change"):
        replay(engine, old, now=T0)
    replay(engine, old, now=T0, force=True)
    assert [r.state for r in list_rows(engine)] == [PENDING, DELIVERED]


def test_naive_times_are_refused(engine: Engine) -> None:
    with pytest.raises(ValueError, match="timezone-aware"), engine.begin() as conn:
        enqueue(
            conn,
            destination="hl7",
            idempotency_key="k1",
            study_uid="1.2.3",
            kind="hl7-omi-o23",
            payload="p",
            actor=REVIEWER,
            patient_id="PAT1",
            now=T0.replace(tzinfo=None),
        )


async def test_run_forever_delivers_and_stops(engine: Engine) -> None:
    delivered = asyncio.Event()
    twin = MemoryWorklistUpdater()

    class Signalling:
        async def deliver(self, message: WorklistMessage) -> str:
            ack = await twin.deliver(message)
            delivered.set()
            return ack

    settings = replace(SETTINGS, poll_seconds=0.01)
    dispatcher = OutboxDispatcher(engine, {"hl7": Signalling()}, settings, "w1")
    stop = asyncio.Event()
    task = asyncio.create_task(dispatcher.run_forever(stop))
    _enqueue(engine, "k1")  # queued while the loop is already polling
    await asyncio.wait_for(delivered.wait(), timeout=10)
    stop.set()
    await asyncio.wait_for(task, timeout=5)
    assert _keys(twin.delivered) == ["k1"]


async def test_a_database_error_in_a_pass_does_not_stop_the_dispatcher(engine: Engine) -> None:
    twin = MemoryWorklistUpdater()
    settings = replace(SETTINGS, poll_seconds=0.01)
    dispatcher = OutboxDispatcher(engine, {"hl7": twin}, settings, "w1")
    real_claim = dispatcher._claim
    failures = [IntegrityError("UPDATE outbox", {}, Exception("constraint"))]

    def flaky_claim(now: datetime) -> Any:
        if failures:
            raise failures.pop()
        return real_claim(now)

    dispatcher._claim = flaky_claim  # type: ignore[method-assign]
    _enqueue(engine, "k1")
    stop = asyncio.Event()
    task = asyncio.create_task(dispatcher.run_forever(stop))
    for _ in range(500):
        if twin.delivered:
            break
        await asyncio.sleep(0.01)
    stop.set()
    await asyncio.wait_for(task, timeout=5)
    assert (failures, _keys(twin.delivered)) == ([], ["k1"])
