"""The receivers of the ingest benchmark (gateway, dcmtk storescp, Orthanc) and what is measured
of them: CPU seconds and peak resident memory of the receiving process tree, read from /proc."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import threading
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Protocol

from tests.conftest import free_port
from tests.peers.gateway_process import GatewayProcess
from tests.peers.orthanc import DICOMWEB_PLUGIN, Orthanc

POSTGRESQL_INDEX_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancPostgreSQLIndex.so")

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


class Receiver(Protocol):
    """A C-STORE receiver started for one run."""

    name: str
    ae_title: str
    dicom_port: int

    def start(self, associations: int) -> None:
        """Start with room for `associations` concurrent associations."""

    def stop(self) -> None:
        """Stop by process id."""

    def pid(self) -> int:
        """The receiving process."""

    def stored(self, expected: int) -> int:
        """How many instances it holds, once those answered before their commit are committed."""


def committed_rows(database_url: str, expected: int, timeout: float = 10.0) -> int:
    """The gateway's instance rows, waiting up to `timeout` until `expected` are committed.

    The gateway answers a C-STORE before its commit (docs/ingest.md): the sender may exit while
    the last rows are still being committed, so an immediate count could come up short.
    """
    from sqlalchemy import create_engine, func, select

    from gateway.persistence.tables import instances

    engine = create_engine(database_url)
    deadline = time.monotonic() + timeout
    try:
        while True:
            with engine.connect() as conn:
                count = int(conn.execute(select(func.count()).select_from(instances)).scalar_one())
            if count >= expected or time.monotonic() > deadline:
                return count
            time.sleep(0.02)
    finally:
        engine.dispose()


def _children(pid: int) -> list[int]:
    found = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            text = Path(f"/proc/{pid}/task/{task}/children").read_text()
            found += [int(c) for c in text.split()]
    except OSError:
        return []
    return found + [g for c in found for g in _children(c)]


def _cpu_seconds(pid: int, *, with_reaped: bool) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = int(fields[11]) + int(fields[12])  # utime, stime
    if with_reaped:
        ticks += int(fields[13]) + int(fields[14])  # cutime, cstime of reaped children
    return ticks / CLOCK_TICKS


def _rss(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE
    except OSError:
        return 0


def _pss(pid: int) -> int:
    """Proportional set size: shared pages (libraries) divided among the processes mapping them."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class TreeMeter:
    """CPU seconds, peak summed RSS and PSS of a process and its children while a run lasts.

    Summed RSS counts a library mapped by several processes once per process; summed PSS counts
    each shared page once, divided among its users, and is what the tree really holds.
    """

    # PSS is read every this many RSS samples: /proc/<pid>/smaps_rollup costs 0.2-0.5 ms a read.
    PSS_EVERY = 5

    def __init__(self, pid: int, interval: float = 0.02) -> None:
        self.pid = pid
        self.interval = interval
        self.peak_rss = 0  # the process and its children (storescp forks one per association)
        self.peak_own_rss = 0  # the receiving process alone
        self.peak_pss = 0  # the process and its children, shared pages counted once
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._cpu_start = 0.0
        self._live_children: dict[int, float] = {}
        self._children_start: dict[int, float] = {}
        self.cpu_seconds = 0.0

    def _tree_cpu(self) -> float:
        total = _cpu_seconds(self.pid, with_reaped=True)
        for child in _children(self.pid):
            self._live_children[child] = _cpu_seconds(child, with_reaped=True)
        return total + sum(self._live_children.values())

    def _sample(self) -> None:
        tick = 0
        while not self._stop.wait(self.interval):
            own = _rss(self.pid)
            children = _children(self.pid)
            self.peak_own_rss = max(self.peak_own_rss, own)
            self.peak_rss = max(self.peak_rss, own + sum(_rss(p) for p in children))
            if tick % self.PSS_EVERY == 0:
                tree = _pss(self.pid) + sum(_pss(p) for p in children)
                self.peak_pss = max(self.peak_pss, tree)
            tick += 1

    def __enter__(self) -> TreeMeter:
        self._cpu_start = _cpu_seconds(self.pid, with_reaped=True)
        # Children alive now (the gateway's inference workers) count from here, not from their
        # own start-up.
        self._children_start = {c: _cpu_seconds(c, with_reaped=True) for c in _children(self.pid)}
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()
        # Forked children that exited were reaped into cutime/cstime; live ones are added.
        now = _cpu_seconds(self.pid, with_reaped=True)
        live = sum(
            _cpu_seconds(c, with_reaped=True) - self._children_start.get(c, 0.0)
            for c in _children(self.pid)
        )
        self.cpu_seconds = now + live - self._cpu_start


class GatewayReceiver:
    """`hitl-gateway serve` with its defaults: fsync per instance, SQLite, audit per instance."""

    name = "gateway"
    ae_title = "HITLGW"

    def __init__(
        self,
        directory: Path,
        postgres_admin_url: str = "",
        *,
        name: str = "gateway",
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.name = name
        self.directory = directory
        self.postgres_admin_url = postgres_admin_url
        self.extra_env = dict(extra_env or {})
        self.gw: GatewayProcess | None = None
        self.dicom_port = 0
        self.http_port = 0
        self.token = ""

    def start(self, associations: int) -> None:
        """Migrate a fresh database and serve; scoring is kept out of the way by a long quiet."""
        data = self.directory / "gateway"
        shutil.rmtree(data, ignore_errors=True)
        data.mkdir(parents=True)
        env = {
            "HITL_GATEWAY_MLFLOW__TRACKING_URI": f"sqlite:///{data}/mlflow.db",
            "HITL_GATEWAY_ASSEMBLY__STABLE_SECONDS": "3600",
            "HITL_GATEWAY_ASSEMBLY__PER_MODALITY": "CT=3600,DX=3600",
            "HITL_GATEWAY_DICOM__MAXIMUM_ASSOCIATIONS": str(max(associations, 4)),
            **self.extra_env,
        }
        self.gw = GatewayProcess(data, self._database_url(data), env)
        self.gw.cli("db", "upgrade")
        self.token = self.gw.cli("token", "--role", "pacs", "--user", "Device/bench").strip()
        self.gw.start()
        self.dicom_port, self.http_port = self.gw.dicom_port, self.gw.http_port
        # Start-up work (model registry, migrations of the embedded MLflow store) is not ingest:
        # ask for readiness once, then wait until the process is idle.
        with contextlib.suppress(OSError):
            urllib.request.urlopen(f"{self.gw.base_url}/readyz", timeout=60).close()  # noqa: S310
        settle(self.pid())

    def _database_url(self, data: Path) -> str:
        if not self.postgres_admin_url:
            return f"sqlite:///{data}/gateway.db"
        from sqlalchemy import create_engine, text

        # A fresh schema per run, as the tests do.
        schema = f"bench_{uuid.uuid4().hex[:12]}"
        admin = create_engine(self.postgres_admin_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        admin.dispose()
        return f"{self.postgres_admin_url}?options=-csearch_path%3D{schema}"

    def stop(self) -> None:
        """Stop the process."""
        if self.gw is not None:
            self.gw.stop()

    def pid(self) -> int:
        """The gateway process."""
        assert self.gw is not None
        assert self.gw.proc is not None
        return self.gw.proc.pid

    def stored(self, expected: int) -> int:
        """Instance rows, once `expected` are committed (or 10 s have passed)."""
        assert self.gw is not None
        return committed_rows(self.gw.env["HITL_GATEWAY_DATABASE__URL"], expected)


class StorescpReceiver:
    """dcmtk `storescp`: one process per association (--fork), writes files, no fsync."""

    name = "storescp"
    ae_title = "STORESCP"

    def __init__(self, directory: Path) -> None:
        self.directory = directory / "storescp"
        self.proc: subprocess.Popen[bytes] | None = None
        self.dicom_port = 0

    def start(self, associations: int) -> None:
        """Start listening."""
        shutil.rmtree(self.directory, ignore_errors=True)
        self.directory.mkdir(parents=True)
        self.dicom_port = free_port()
        fork = ["--fork"] if associations > 1 else []
        self.proc = subprocess.Popen(
            ["storescp", *fork, "+xa", "-aet", self.ae_title, "-od", str(self.directory),
             str(self.dicom_port)],
            env={**os.environ, "TCP_NODELAY": "1"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        _wait_port(self.dicom_port)

    def stop(self) -> None:
        """Stop the process."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=20)

    def pid(self) -> int:
        """The listening process."""
        assert self.proc is not None
        return self.proc.pid

    def stored(self, expected: int) -> int:
        """Files written (each answered after its file was written)."""
        return sum(1 for p in self.directory.iterdir() if p.is_file())


class OrthancReceiver:
    """Orthanc with its default durability (fsync of every file) and the DICOMweb plugin.

    With `postgres_admin_url` its index is kept by the PostgreSQL index plugin (Debian package
    `orthanc-postgresql`) in a fresh database per run, so each instance's index row is committed
    durably before success, as the gateway's is; the files stay in its storage directory.
    """

    ae_title = "ORTHANC"

    def __init__(self, directory: Path, postgres_admin_url: str = "") -> None:
        self.postgres_admin_url = postgres_admin_url
        self.name = "orthanc-postgresql" if postgres_admin_url else "orthanc"
        self.directory = directory / self.name
        self.pacs: Orthanc | None = None
        self.database = ""
        self.dicom_port = 0
        self.http_port = 0

    def start(self, associations: int) -> None:
        """Start with an empty store."""
        shutil.rmtree(self.directory, ignore_errors=True)
        extra: dict[str, object] = {}
        if self.postgres_admin_url:
            from sqlalchemy.engine import make_url

            url = make_url(self.postgres_admin_url)
            self.database = f"orthanc_bench_{uuid.uuid4().hex[:12]}"
            self._admin(f'CREATE DATABASE "{self.database}"')
            extra["Plugins"] = [str(DICOMWEB_PLUGIN), str(POSTGRESQL_INDEX_PLUGIN)]
            extra["PostgreSQL"] = {
                "EnableIndex": True,
                "EnableStorage": False,
                "Host": url.host or "127.0.0.1",
                "Port": url.port or 5432,
                "Database": self.database,
                "Username": url.username or "postgres",
                "Password": url.password or "",
                "Lock": False,
            }
        self.pacs = Orthanc(self.directory, dicomweb=True, extra=extra).start()
        self.dicom_port, self.http_port = self.pacs.dicom_port, self.pacs.http_port

    def _admin(self, statement: str) -> None:
        from sqlalchemy import create_engine, text

        admin = create_engine(self.postgres_admin_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(statement))
        admin.dispose()

    def stop(self) -> None:
        """Stop the process (and drop its database)."""
        if self.pacs is not None:
            self.pacs.stop()
        if self.database:
            self._admin(f'DROP DATABASE IF EXISTS "{self.database}"')
            self.database = ""

    def pid(self) -> int:
        """The Orthanc process."""
        assert self.pacs is not None
        assert self.pacs.proc is not None
        return self.pacs.proc.pid

    def stored(self, expected: int) -> int:
        """Instances in its index (each answered after its index commit)."""
        assert self.pacs is not None
        return int(self.pacs.get("/statistics")["CountInstances"])


def settle(pid: int, window: float = 0.5, busy: float = 0.05, timeout: float = 60.0) -> None:
    """Wait until `pid` uses less than `busy` of a CPU over `window` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        before = _cpu_seconds(pid, with_reaped=True)
        time.sleep(window)
        if _cpu_seconds(pid, with_reaped=True) - before < busy * window:
            return


def _wait_port(port: int, timeout: float = 10.0) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"nothing listens on {port}")
