"""Per-instance cost of recording a received instance: `parse_header` + `InstanceRecorder.record`.

What the C-STORE handler does for each instance, without the network: the 300-slice CT study of
bench.ingest (0.53 MB per file) is copied to temporary files first (pynetdicom's received files,
on the spool's file system), then each is parsed and recorded with `adopt=True` and a transfer id,
by 1 thread and by 4 threads (concurrent associations sharing group commits). Every run gets a
fresh migrated database (SQLite file, or a new PostgreSQL schema dropped afterwards) and a fresh
spool. Prints wall ms per instance and CPU ms per instance (process CPU time, committing thread
included), the median of `--repeat` runs.

    .venv/bin/python -m bench.record_path [--postgres URL] [--repeat N] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine, create_engine, func, select, text

from bench.ingest import CT_CLASS, generate
from gateway.audit.trail import ensure_head
from gateway.ingest import InstanceRecorder, parse_header
from gateway.persistence.db import make_engine
from gateway.persistence.migrate import upgrade
from gateway.persistence.tables import instance_attributes, instances, studies
from gateway.settings import Settings
from gateway.spool import Spool


@dataclass(frozen=True)
class Run:
    """One timed pass over the study."""

    threads: int
    instances: int
    seconds: float
    cpu_seconds: float
    system_seconds: float
    parse_seconds: float

    @property
    def ms(self) -> float:
        """Wall milliseconds per instance."""
        return 1000 * self.seconds / self.instances

    @property
    def cpu_ms(self) -> float:
        """Process CPU milliseconds per instance."""
        return 1000 * self.cpu_seconds / self.instances

    @property
    def system_ms(self) -> float:
        """Of the CPU milliseconds per instance, those spent in the kernel (fsync, writes)."""
        return 1000 * self.system_seconds / self.instances

    @property
    def parse_ms(self) -> float:
        """Wall milliseconds per instance in parse_header alone (summed over threads)."""
        return 1000 * self.parse_seconds / self.instances


def _driver_url(url: str) -> str:
    # A plain postgresql:// URL would pick psycopg2, which the gateway does not use.
    if url.startswith("postgresql://"):
        return "postgresql+psycopg://" + url.removeprefix("postgresql://")
    return url


@contextmanager
def database(work: Path, postgres_admin_url: str) -> Iterator[str]:
    """A fresh, migrated database: a SQLite file under `work` or a new PostgreSQL schema."""
    if not postgres_admin_url:
        url = f"sqlite:///{work / 'gateway.db'}"
        _migrate(url)
        yield url
        return
    admin_url = _driver_url(postgres_admin_url)
    schema = f"bench_{uuid.uuid4().hex[:12]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        url = f"{admin_url}?options=-csearch_path%3D{schema}"
        _migrate(url)
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def _migrate(url: str) -> None:
    engine = make_engine(url)
    upgrade(engine)
    with engine.begin() as conn:
        ensure_head(conn)
    engine.dispose()


def _received_copies(files: Sequence[Path], directory: Path) -> list[Path]:
    # The handler's received files: written just before, not yet fsynced.
    directory.mkdir(parents=True)
    copies = []
    for n, source in enumerate(files):
        target = directory / f"received-{n:04d}.dcm"
        shutil.copyfile(source, target)
        copies.append(target)
    return copies


def measure(files: Sequence[Path], threads: int, postgres_admin_url: str, root: Path) -> Run:
    """Record the study once with `threads` concurrent callers into a fresh database and spool."""
    work = Path(tempfile.mkdtemp(prefix="record-path-", dir=root))
    try:
        with database(work, postgres_admin_url) as url:
            engine = make_engine(url)
            try:
                recorder = InstanceRecorder(engine, Spool(work / "spool"), Settings())
                received = _received_copies(files, work / "received")
                parts = [received[i::threads] for i in range(threads)]
                parse_time = [0.0] * threads
                barrier = threading.Barrier(threads + 1)

                def associate(n: int) -> None:
                    transfer_id = f"bench:{uuid.uuid4().hex}"
                    barrier.wait()
                    for path in parts[n]:
                        started = time.perf_counter()
                        header = parse_header(path)
                        parse_time[n] += time.perf_counter() - started
                        recorder.record(
                            path,
                            header,
                            "STORESCU",
                            peer_address="127.0.0.1",
                            transfer_id=transfer_id,
                            adopt=True,
                        )
                        path.unlink()  # as pynetdicom removes its file after the handler

                workers = [threading.Thread(target=associate, args=(n,)) for n in range(threads)]
                for w in workers:
                    w.start()
                barrier.wait()
                wall, cpu, system = time.perf_counter(), time.process_time(), os.times().system
                for w in workers:
                    w.join()
                wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
                system = os.times().system - system
                _check(engine, len(files))
            finally:
                engine.dispose()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return Run(threads, len(files), wall, cpu, system, sum(parse_time))


def _check(engine: Engine, count: int) -> None:
    with engine.connect() as conn:
        stored = conn.execute(select(func.count()).select_from(instances)).scalar_one()
        indexed = conn.execute(select(func.count()).select_from(instance_attributes)).scalar_one()
        counted = conn.execute(select(studies.c.instance_count)).scalar_one()
    if not stored == indexed == counted == count:
        raise SystemExit(f"recorded {stored}, indexed {indexed}, counted {counted} of {count}")


def _median(runs: Sequence[Run]) -> Run:
    return sorted(runs, key=lambda r: r.cpu_seconds)[len(runs) // 2]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print a table."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path("var/bench-ingest"))
    parser.add_argument("--postgres", default="", help="admin URL: a fresh schema per run")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", default="1,4")
    args = parser.parse_args(argv)
    work = args.workdir.resolve()
    files = generate(work, "ct", 300, 512, CT_CLASS)
    root = work / "record-path"
    root.mkdir(parents=True, exist_ok=True)
    store = "PostgreSQL" if args.postgres else "SQLite"
    print(
        f"| {store} | threads | ms/instance | CPU ms/instance | of which kernel "
        "| parse_header ms | CPU ms of each run |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | --- |")
    for threads in (int(t) for t in args.threads.split(",")):
        runs = [measure(files, threads, args.postgres, root) for _ in range(args.repeat)]
        best = _median(runs)
        spread = ", ".join(f"{r.cpu_ms:.2f}" for r in runs)
        print(
            f"| CT 300 x 0.53 MB | {threads} | {best.ms:.2f} | {best.cpu_ms:.2f} | "
            f"{best.system_ms:.2f} | {best.parse_ms:.2f} | {spread} |",
            flush=True,
        )
    print(f"# median of {args.repeat} runs; CPU is process time, committing thread included")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
