"""Task search latency (p50/p95) with 100,000 review Tasks, on SQLite and PostgreSQL.

The Tasks are real review Tasks (built by the FHIR mapping, as the scoring step builds them) with
varied status, priority, owner, patient and study, stored through the repository's columns. Each
query runs through the FHIR facade's search core (`gateway.fhir_api.task_search.search_tasks`,
the code the HTTP route calls, without the socket). The reference, measured in the same run, is
a read of one Task by id; the ratio p50(search) / p50(read) is printed per query.

    .venv/bin/python -m bench.task_search [--tasks 100000] [--repeat 200]
        [--database sqlite|postgresql|both]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, insert, text

from fhir_mapping.canonical import canonical_json
from fhir_mapping.task import build_review_task, with_version
from gateway.domain.model import ModelIdentity, ScoreResult, StudyContext, Thresholds
from gateway.domain.priority import Priority
from gateway.fhir_api.core import FhirRequest
from gateway.fhir_api.task_search import search_tasks
from gateway.persistence.db import make_engine
from gateway.persistence.migrate import upgrade
from gateway.persistence.tables import tasks
from gateway.tasks import TaskRepository

POSTGRES = os.environ.get(
    "HITL_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
MODEL = ModelIdentity(name="cxr-pneumothorax", version="3", sha256="ab" * 32)
STATUSES = ["requested"] * 3 + ["in-progress", "accepted"] + ["completed"] * 10 + ["cancelled"]
QUERIES = {
    "worklist": "status=requested,accepted,in-progress&_sort=-priority,_lastUpdated&_count=50",
    "owner": "owner=Practitioner/dr-7&status=in-progress",
    "patient": "patient=Patient/p-4242",
    "focus": "focus=ImagingStudy/1.2.826.0.1.3680043.8.498.4242",
    "recent": "_lastUpdated=gt{recent}&_count=50",
    "business-status": "business-status=approved&_count=20",
}


def _rows(count: int) -> list[dict[str, Any]]:
    rng = random.Random(7)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    repo = TaskRepository()
    rows = []
    template_study = StudyContext("1.2.3", "p", "Doe^J", "ACC", "CR", encounter_id="e")
    template_score = ScoreResult("1.2.3", Thresholds(0.8, 0.95), "cd" * 32, 0.9, MODEL)
    for n in range(count):
        uid = f"1.2.826.0.1.3680043.8.498.{n}"
        when = start + timedelta(seconds=30 * n)
        resource = build_review_task(
            task_id=str(uuid.UUID(int=rng.getrandbits(128))),
            study=replace(template_study, study_instance_uid=uid, patient_id=f"p-{n % 50_000}",
                          encounter_id=f"e-{n}"),
            score=replace(template_score, study_instance_uid=uid, score=0.8 + rng.random() / 5),
            priority=rng.choice(list(Priority)),
            authored_on=when,
            model_device_ref="Device/cxr-pneumothorax-3",
        )  # fmt: skip
        status = rng.choice(STATUSES)
        resource["status"] = status
        if status != "requested":
            resource["owner"] = {"reference": f"Practitioner/dr-{rng.randrange(40)}"}
        if status == "completed":
            resource["businessStatus"]["coding"][0]["code"] = rng.choice(
                ["approved", "overridden", "rejected"]
            )
        stored = with_version(resource, 1, when)
        rows.append({"id": resource["id"], "version_id": 1, "last_updated": when,
                     "resource": canonical_json(stored), **repo._columns(stored)})  # fmt: skip
    return rows


def _load(engine: Engine, rows: list[dict[str, Any]]) -> float:
    began = time.perf_counter()
    with engine.begin() as conn:
        for chunk in range(0, len(rows), 5000):
            conn.execute(insert(tasks), rows[chunk : chunk + 5000])
    # What autovacuum (PostgreSQL) would have done by then: statistics and the visibility map.
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(
            text("VACUUM ANALYZE tasks" if engine.dialect.name == "postgresql" else "ANALYZE")
        )
    return time.perf_counter() - began


def _request(query: str) -> FhirRequest:
    pairs = tuple((k, v) for k, _, v in (p.partition("=") for p in query.split("&")))
    return FhirRequest("GET", "/fhir/Task", {}, query=pairs, base="http://bench/fhir")


def _timed(fn: Callable[[], Any], repeat: int) -> list[float]:
    fn()  # warm caches and prepared statements
    samples = []
    for _ in range(repeat):
        began = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - began) * 1000)
    return samples


def _p(samples: list[float], q: float) -> float:
    return statistics.quantiles(samples, n=100)[int(q) - 1]


def run(engine: Engine, rows: list[dict[str, Any]], repeat: int) -> None:
    upgrade(engine)
    print(f"\n{engine.dialect.name}: loading {len(rows)} Tasks ...", flush=True)
    print(f"  load {_load(engine, rows):.1f} s")
    one = rows[len(rows) // 2]["id"]
    repo = TaskRepository()

    def read() -> Any:
        with engine.connect() as conn:
            return repo.read(conn, one)

    reference = _timed(read, repeat)
    ref50 = statistics.median(reference)
    print(f"  {'reference: read by id':<18} p50 {ref50:7.2f} ms  p95 {_p(reference, 95):7.2f} ms")
    recent = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=30 * (len(rows) - 500))
    for name, query in QUERIES.items():
        request = _request(query.format(recent=recent.strftime("%Y-%m-%dT%H:%M:%SZ")))

        def search(request: FhirRequest = request) -> Any:
            with engine.connect() as conn:
                return search_tasks(conn, request, None)

        found, total = search()
        samples = _timed(search, repeat)
        p50, p95 = statistics.median(samples), _p(samples, 95)
        print(f"  {name:<18} p50 {p50:7.2f} ms  p95 {p95:7.2f} ms  ratio {p50 / ref50:6.1f}  "
              f"(total {total}, page {len(found)})")  # fmt: skip


def main() -> None:
    """Run the benchmark on the chosen databases."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=200)
    parser.add_argument("--database", choices=["sqlite", "postgresql", "both"], default="both")
    args = parser.parse_args()
    print(f"building {args.tasks} review Tasks ...", flush=True)
    rows = _rows(args.tasks)
    if args.database in {"sqlite", "both"}:
        with tempfile.TemporaryDirectory() as folder:
            engine = make_engine(f"sqlite:///{Path(folder) / 'bench.db'}")
            try:
                run(engine, rows, args.repeat)
            finally:
                engine.dispose()
    if args.database in {"postgresql", "both"}:
        schema = f"bench_{uuid.uuid4().hex[:10]}"
        admin = create_engine(POSTGRES, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        try:
            engine = make_engine(f"{POSTGRES}?options=-csearch_path%3D{schema}")
            try:
                run(engine, rows, args.repeat)
            finally:
                engine.dispose()
        finally:
            with admin.connect() as conn:
                conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
            admin.dispose()


if __name__ == "__main__":
    main()
