"""Decision-to-ACK latency of HL7 worklist delivery for a burst of decisions (target p95 < 1 s).

Each decision is one committed transaction that queues a neutral priority change in the outbox
(as the review service does); the dispatcher renders OMI^O23 and sends it over MLLP to the real
`hl7` package listener on loopback. Latency is measured from each commit to the moment its AA
was read. The reference run, measured in the same process, sends the same number of rendered
messages straight to the listener one after another, without outbox or database; the ratio of
the two p95s is the cost of guaranteed delivery.

    .venv/bin/python -m bench.worklist_latency [--decisions 1000] [--database-url URL]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import Engine

from adapters.worklist.hl7_render import Hl7Profile
from adapters.worklist.mllp import MllpWorklistUpdater
from gateway.audit.trail import ensure_head
from gateway.domain.model import Actor
from gateway.domain.priority import Priority
from gateway.domain.worklist import PRIORITY_CHANGE_KIND, PriorityChange
from gateway.outbox import DELIVERED, OutboxDispatcher, enqueue, list_rows
from gateway.persistence.db import make_engine
from gateway.persistence.migrate import upgrade
from gateway.ports import WorklistMessage
from gateway.settings import WorklistSettings
from tests.peers.mllp_listener import MllpListener

REVIEWER = Actor(reference="Practitioner/bench", roles=("reviewer",))
PRIORITIES = list(Priority)


def _change(n: int) -> PriorityChange:
    return PriorityChange(
        idempotency_key=f"bench-task-{n}:2",
        study_instance_uid=f"1.2.826.0.1.3680043.8.498.{n}",
        accession_number=f"ACC{n:06d}",
        patient_id=f"PAT{n:06d}",
        patient_name="Doe^Jane",
        priority=PRIORITIES[n % len(PRIORITIES)],
        requested_at=datetime.now(UTC),
    )


class TimedUpdater:
    """Wraps the MLLP updater and notes when each ACK was read."""

    def __init__(self, inner: MllpWorklistUpdater) -> None:
        self.inner = inner
        self.acked: dict[str, float] = {}

    async def deliver(self, message: WorklistMessage) -> str:
        """Deliver and record the ACK time."""
        ack = await self.inner.deliver(message)
        self.acked[message.idempotency_key] = time.perf_counter()
        return ack


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(fraction * len(ordered)) - 1))]


async def reference(port: int, count: int) -> list[float]:
    """Latency of each of `count` direct MLLP exchanges, sent one after another."""
    updater = MllpWorklistUpdater("127.0.0.1", port, timeout=10, profile=Hl7Profile())
    latencies = []
    for n in range(count):
        change = _change(10_000_000 + n)
        message = WorklistMessage(
            n, change.idempotency_key, "hl7", PRIORITY_CHANGE_KIND, change.to_json()
        )
        start = time.perf_counter()
        await updater.deliver(message)
        latencies.append(time.perf_counter() - start)
    return latencies


def _decide(engine: Engine, count: int, committed: dict[str, float], rate: float) -> None:
    started = time.perf_counter()
    for n in range(count):
        if rate > 0:  # paced arrivals: decision n is made n/rate seconds into the burst
            time.sleep(max(0.0, started + n / rate - time.perf_counter()))
        change = _change(n)
        with engine.begin() as conn:
            enqueue(
                conn,
                destination="hl7",
                idempotency_key=change.idempotency_key,
                study_uid=change.study_instance_uid,
                kind=PRIORITY_CHANGE_KIND,
                payload=change.to_json(),
                actor=REVIEWER,
                patient_id=change.patient_id,
            )
        committed[change.idempotency_key] = time.perf_counter()


async def through_outbox(
    engine: Engine, port: int, count: int, batch: int, rate: float
) -> list[float]:
    """Decision-to-ACK latency for `count` decisions committed as fast as the database allows."""
    timed = TimedUpdater(MllpWorklistUpdater("127.0.0.1", port, timeout=10))
    settings = WorklistSettings(poll_seconds=0.02, backoff_seconds=0.05)
    dispatcher = OutboxDispatcher(engine, {"hl7": timed}, settings, "bench", batch_size=batch)
    stop = asyncio.Event()
    running = asyncio.create_task(dispatcher.run_forever(stop))
    committed: dict[str, float] = {}
    await asyncio.to_thread(_decide, engine, count, committed, rate)
    while len(timed.acked) < count:  # noqa: ASYNC110  (a benchmark poll, not a wait in the product)
        await asyncio.sleep(0.01)
    stop.set()
    await running
    rows = list_rows(engine)
    assert all(r.state == DELIVERED for r in rows), "every change must be delivered"
    return [timed.acked[k] - committed[k] for k in committed]


def _report(name: str, values: list[float]) -> tuple[float, float]:
    p50, p95 = percentile(values, 0.50), percentile(values, 0.95)
    print(
        f"{name:<34} n={len(values):5d}  p50={p50 * 1000:8.1f} ms  p95={p95 * 1000:8.1f} ms  "
        f"max={max(values) * 1000:8.1f} ms  mean={statistics.fmean(values) * 1000:8.1f} ms"
    )
    return p50, p95


async def main(count: int, database_url: str, batch: int, rate: float) -> None:
    """Run the reference and the outbox burst; print both and their ratio."""
    listener = MllpListener().start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            url = database_url or f"sqlite:///{Path(tmp) / 'bench.db'}"
            engine = make_engine(url)
            upgrade(engine)
            with engine.begin() as conn:
                ensure_head(conn)
            ref_p50, ref_p95 = _report(
                "reference: direct MLLP, serial", await reference(listener.port, count)
            )
            started = time.perf_counter()
            latencies = await through_outbox(engine, listener.port, count, batch, rate)
            wall = time.perf_counter() - started
            p50, p95 = _report("decision-to-ACK through the outbox", latencies)
            engine.dispose()
        pace = f"{rate:g}/s" if rate > 0 else "unpaced"
        print(
            f"database {engine.url.get_backend_name()}, batch {batch}, arrivals {pace}, "
            f"burst wall time {wall:.2f} s"
        )
        print(f"ratio p50 {p50 / ref_p50:.1f}x, p95 {p95 / ref_p95:.1f}x of the reference")
        print(f"target p95 < 1000 ms: {'met' if p95 < 1.0 else 'NOT met'}")
    finally:
        listener.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--decisions", type=int, default=1000)
    parser.add_argument("--database-url", default="")
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument(
        "--rate", type=float, default=0.0, help="decisions per second (0: as fast as committed)"
    )
    args = parser.parse_args()
    asyncio.run(main(args.decisions, args.database_url, args.batch, args.rate))
