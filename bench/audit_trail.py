"""The audit trail at six-year scale on PostgreSQL: chained insert throughput, auditor search
latency, full-chain verification and a one-month audit package.

Targets (issue 7): insert >= 5,000 records/s with the hash chain; p95 of
`AuditEvent?patient=...&date=...` and `Provenance?agent=...` < 100 ms; export of one month
(~100,000 records) < 60 s; full-chain verify time reported. Six years of records are spread
evenly over the chain (default 6,000,000 records: ~83,000 a month).

Each figure is printed with a ratio against a reference measured in the same run on the same
database: plain multi-row INSERTs of the same rows into a table with only a primary key (what the
chain, its indexes and the search index cost), primary-key reads of random records (what a search
costs over the cheapest lookup), and a bare read of every row (what hashing and checking cost).

    .venv/bin/python -m bench.audit_trail [--records 6000000] [--batch 2000] [--queries 200]
        [--url postgresql+psycopg://postgres@127.0.0.1:5432/test] [--keep]

A fresh schema is created for the run and dropped afterwards (unless --keep).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, text

from fhir_mapping.audit_event import audit_event_for
from fhir_mapping.canonical import canonical_json
from gateway.audit.batch import append_staged, stage
from gateway.audit.checkpoint import create_checkpoint
from gateway.audit.package import ExportRequest, export_package
from gateway.audit.query import AuditQuery, search_records
from gateway.audit.signing import AuditKeyring
from gateway.audit.trail import append
from gateway.audit.verify import verify_chain
from gateway.domain.model import Actor, ModelIdentity, Thresholds
from gateway.persistence.db import make_engine
from gateway.persistence.migrate import upgrade
from gateway.pipeline import Event, PipelineEvent

ADMIN_URL = os.environ.get(
    "HITL_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
YEARS = 6
REVIEWERS = 200
MODEL = ModelIdentity(name="cxr-pneumothorax", version="7", sha256="ab" * 32)
START = datetime(2020, 1, 1, tzinfo=UTC)


def _templates() -> list[tuple[str, str]]:
    """(resource type, JSON text with placeholders) of the record kinds of a site's trail."""
    reviewer = Actor("Practitioner/REVIEWER", ("reviewer",), "Dr Bench", "jti-x", "10.1.2.3")
    gateway = Actor("Device/hitl-gateway")
    common: dict[str, Any] = {
        "occurred_at": START,
        "study_instance_uid": "1.2.826.0.1.3680043.8.498.1",
        "patient_id": "PATIENT",
        "encounter_id": "ENC",
        "model": MODEL,
        "input_hash": "cd" * 32,
        "thresholds": Thresholds(0.8, 0.95),
    }
    events = [
        PipelineEvent(kind=Event.INSTANCE_STORED, actor=gateway, **common),
        PipelineEvent(kind=Event.STUDY_SCORED, actor=gateway, **common),
        PipelineEvent(
            kind=Event.REVIEW_REQUESTED, actor=gateway, entities=("Task/TASK/_history/1",), **common
        ),
        PipelineEvent(
            kind=Event.DECISION_RECORDED,
            actor=reviewer,
            rationale="finding-confirmed",
            entities=("Task/TASK/_history/2",),
            detail={"decision": "approve"},
            request_id="REQ",
            subtype="update",
            **common,
        ),
    ]
    templates = [
        ("AuditEvent", canonical_json(audit_event_for(e, record_id="ID", observer="hitl-gateway")))
        for e in events
    ]
    provenance = {
        "resourceType": "Provenance",
        "id": "ID",
        "target": [{"reference": "Task/TASK/_history/2"}],
        "recorded": START.isoformat(),
        "activity": {"coding": [{"code": "UPDATE"}]},
        "agent": [
            {"who": {"reference": "Practitioner/REVIEWER"}},
            {"who": {"reference": "Device/cxr-pneumothorax-7"}},
        ],
        "entity": [{"role": "source", "what": {"reference": "Task/TASK/_history/1"}}],
    }
    templates.append(("Provenance", canonical_json(provenance)))
    return templates


def _record(
    template: tuple[str, str], n: int, total: int, patients: int
) -> tuple[str, dict[str, Any], str]:
    resource_type, body = template
    recorded = START + timedelta(days=YEARS * 365 * n / total)
    patient = f"pat-{(n * 7919) % patients}"
    body = (
        body.replace('"ID"', f'"{uuid.uuid4()}"')
        .replace("Patient/PATIENT", f"Patient/{patient}")
        .replace("Practitioner/REVIEWER", f"Practitioner/r{n % REVIEWERS}")
        .replace("Task/TASK", f"Task/t{n // 5}")
        .replace(START.isoformat(), recorded.isoformat())
        .replace(START.strftime('"%Y-%m-%dT%H:%M:%SZ"'), recorded.strftime('"%Y-%m-%dT%H:%M:%SZ"'))
        .replace('"REQ"', f'"req-{n}"')
    )
    return resource_type, json.loads(body), patient


def _records(
    total: int, patients: int, start: int = 0
) -> Iterator[tuple[str, dict[str, Any], str]]:
    templates = _templates()
    for n in range(start, total):
        # Per study: stored, scored, requested, decided + the decision's Provenance.
        yield _record(templates[n % len(templates)], n, total, patients)


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    value = fn()
    return time.perf_counter() - started, value


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _load(engine: Engine, keyring: AuditKeyring, total: int, batch: int, patients: int) -> float:
    """Append `total` records in transactions of `batch`, with signed checkpoints on the way.

    Timed: staging (canonical JSON, index values) and the chained write, per batch; not timed:
    generating the synthetic resources, which a real source hands over ready-made.
    """
    every = min(100_000, max(batch, total // 10))
    source = _records(total, patients)
    done, elapsed = 0, 0.0
    while done < total:
        items = [next(source) for _ in range(min(batch, total - done))]
        started = time.perf_counter()
        staged = stage(items, validate=False)
        with engine.begin() as conn:
            append_staged(conn, staged)
            if (done + len(staged)) % every < batch:
                create_checkpoint(conn, keyring, "periodic")
        elapsed += time.perf_counter() - started
        done += len(staged)
        if done % 500_000 < batch:
            print(f"  loaded {done:,} records ({done / elapsed:,.0f}/s)", flush=True)
    return elapsed


def _plain_reference(engine: Engine, count: int, batch: int, patients: int) -> float:
    """The same rows as plain multi-row INSERTs into a table with only a primary key."""
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE bench_plain (seq BIGINT PRIMARY KEY, resource TEXT)"))
    source = _records(count, patients)
    elapsed, seq = 0.0, 0
    while seq < count:
        rows = []
        for _ in range(min(batch, count - seq)):
            seq += 1
            rows.append({"seq": seq, "resource": canonical_json(next(source)[1])})
        started = time.perf_counter()
        with engine.begin() as conn:
            conn.execute(
                text("INSERT INTO bench_plain (seq, resource) VALUES (:seq, :resource)"), rows
            )
        elapsed += time.perf_counter() - started
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE bench_plain"))
    return elapsed


def _searches(engine: Engine, total: int, patients: int, queries: int) -> dict[str, list[float]]:
    rng = random.Random(7)
    timings: dict[str, list[float]] = {"patient+date": [], "agent": [], "reference": []}
    with engine.connect() as conn:
        ids = [
            r[0]
            for r in conn.execute(
                text(
                    "SELECT resource_id FROM audit_log TABLESAMPLE SYSTEM (1)"
                    " WHERE resource_type = 'AuditEvent' LIMIT :n"
                ),
                {"n": queries},
            )
        ]
        for _ in range(queries):
            day = START + timedelta(days=rng.uniform(0, YEARS * 365 - 365))
            query = AuditQuery(
                "AuditEvent",
                patient=f"pat-{rng.randrange(patients)}",
                date_from=day,
                date_to=day + timedelta(days=365),
            )
            timings["patient+date"].append(_timed(partial(search_records, conn, query))[0])
            agent = AuditQuery(
                "Provenance", tokens={"agent": f"Practitioner/r{rng.randrange(REVIEWERS)}"}
            )
            timings["agent"].append(_timed(partial(search_records, conn, agent))[0])
        by_id = text(
            "SELECT resource FROM audit_log WHERE resource_type = 'AuditEvent' AND resource_id = :i"
        )
        for resource_id in ids or ["none"]:
            timings["reference"].append(_timed(partial(conn.execute, by_id, {"i": resource_id}))[0])
    return timings


def _bare_read(engine: Engine) -> float:
    started = time.perf_counter()
    with engine.connect() as conn:
        rows = conn.execution_options(yield_per=5000).execute(
            text("SELECT seq, resource, prev_hash, hash FROM audit_log ORDER BY seq")
        )
        for _ in rows:
            pass
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=6_000_000)
    parser.add_argument("--batch", type=int, default=2000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--url", default=ADMIN_URL)
    parser.add_argument("--keep", action="store_true", help="keep the schema afterwards")
    args = parser.parse_args(argv)
    total, patients = args.records, max(10, args.records // 30)
    schema = f"bench_audit_{uuid.uuid4().hex[:8]}"
    admin = create_engine(args.url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    engine = make_engine(f"{args.url}?options=-csearch_path%3D{schema}")
    work = Path(tempfile.mkdtemp(prefix="bench-audit-"))
    keyring = AuditKeyring(work / "keys")
    try:
        upgrade(engine)
        print(f"audit trail benchmark: {total:,} records, {patients:,} patients, schema {schema}")
        print(f"  load average at start: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
        sample = min(total, 100_000)
        plain = _plain_reference(engine, sample, args.batch, patients)
        single_n = min(2000, total)
        single_source = _records(single_n, patients)
        started = time.perf_counter()
        for item in single_source:
            _append_one(engine, item)
        single = time.perf_counter() - started
        chained = _load(engine, keyring, total, args.batch, patients)
        with engine.begin() as conn:
            conn.execute(text("ANALYZE"))
        timings = _searches(engine, total, patients, args.queries)
        verify_s, report = _timed(
            lambda: verify_chain(engine, batch_size=5000, public_keys=keyring.public_jwks())
        )
        bare = _bare_read(engine)
        # One month of a six-year trail of 6,000,000 records holds ~83,000 records; a smaller
        # run exports a window holding as many records (up to half the trail) instead.
        wanted = min(100_000, total // 2)
        days = YEARS * 365 * wanted / total
        month_start = START + timedelta(days=YEARS * 365 / 4)
        request = ExportRequest(month_start, month_start + timedelta(days=days))
        export_s, manifest = _timed(
            lambda: export_package(
                engine, keyring, work / "package", request, actor=Actor("Device/bench")
            )
        )
        exported = sum(
            f["lines"]
            for f in manifest["files"]
            if f["name"] in {"AuditEvent.ndjson", "Provenance.ndjson"}
        )
        rate = total / chained
        print()
        print(f"{'measure':<44}{'value':>16}{'reference':>16}{'ratio':>8}  target")
        _row("insert with hash chain, records/s", rate, sample / plain, ">= 5,000")
        _row("single append() per event, records/s", single_n / single, None, "")
        for name, target in (("patient+date", "< 100 ms"), ("agent", "< 100 ms")):
            p95 = _p(timings[name], 0.95) * 1000
            _row(f"search {name} p95, ms", p95, _p(timings["reference"], 0.95) * 1000, target)
            _row(f"search {name} p50, ms", statistics.median(timings[name]) * 1000, None, "")
        _row(f"full-chain verify ({report.records:,} records), s", verify_s, bare, "")
        outcome = "OK" if report.ok else f"BROKEN: {report.reason}"
        print(f"  verify: {outcome}, {report.checkpoints} signed checkpoints")
        _row(f"export {days:.0f} days ({exported:,} records), s", export_s, None, "< 60 s")
        _row("export, records/s", exported / export_s, None, "")
        print(
            f"  projected export of 100,000 records: {100_000 * export_s / max(exported, 1):.1f} s"
        )
    finally:
        engine.dispose()
        if not args.keep:
            with admin.connect() as conn:
                conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()
    return 0


def _append_one(engine: Engine, item: tuple[str, dict[str, Any], str]) -> None:
    with engine.begin() as conn:
        append(conn, item[0], item[1], item[2])


def _row(name: str, value: float, reference: float | None, target: str) -> None:
    ref = f"{reference:16,.2f}" if reference is not None else " " * 16
    ratio = f"{value / reference:8.2f}" if reference else " " * 8
    print(f"{name:<44}{value:16,.2f}{ref}{ratio}  {target}")


if __name__ == "__main__":
    raise SystemExit(main())
