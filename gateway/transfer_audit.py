"""DICOM Instances Transferred (DCM 110104) once per association or STOW-RS request.

Each instance's own record is written with its row (INSTANCE_STORED); this summary is what an
auditor reads first (PS3.15 A.5.3.5): who sent how many instances of which studies and patients,
and how many were refused.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import Engine, select, update

from gateway.audit.trail import record_event
from gateway.domain.model import Actor
from gateway.ingest import IngestOutcome, sender_actor
from gateway.persistence.tables import instances, studies
from gateway.pipeline import Event, PipelineEvent

log = logging.getLogger(__name__)

# Only so many identifiers are listed in one record; the counts stay exact.
MAX_LISTED = 50


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _boot() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip().replace("-", "")[:8]
    except OSError:
        return ""


def _run_of(pid: int, boot: str) -> str | None:
    """`boot.start`: the boot and the clock tick `pid` started at; None without /proc."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name in parentheses may hold spaces: fields are counted after its end.
    fields = stat[stat.rindex(")") + 2 :].split()
    return f"{boot}.{int(fields[19]):x}" if boot and len(fields) > 19 else None


# Tells this process from any other that had the same process id: a container restarted in
# place runs the gateway under the same pid (often 1), and after a crash an unrelated program
# may hold the pid. Where /proc cannot say when a process started, a random token stands in: it
# tells only this process's own transfers from an earlier one's.
_BOOT = _boot()
_RUNS: dict[int, str] = {}  # by pid: a forked child is a run of its own


def _own_run() -> str:
    pid = os.getpid()
    if pid not in _RUNS:
        _RUNS[pid] = _run_of(pid, _BOOT) or uuid.uuid4().hex[:8]
    return _RUNS[pid]


def receiving_run() -> str:
    """`host:pid:run`: this process's run, as it names its receiving directory."""
    return f"{socket.gethostname()[:40]}:{os.getpid()}:{_own_run()}"


def run_ended(run: str) -> bool:
    """True when a run named by `receiving_run()` is over (it may have crashed)."""
    return not _alive(f"{run}:-")


def new_transfer_id() -> str:
    """`host:pid:run:random`: whose transfer it was, so a restart finds its leftovers."""
    return f"{socket.gethostname()[:40]}:{os.getpid()}:{_own_run()}:{uuid.uuid4().hex[:12]}"


@dataclass
class TransferTally:
    """What one association or request transferred; thread-safe, as pynetdicom's may not be."""

    calling_ae: str
    peer_address: str = ""
    transport: str = "DIMSE"
    actor: Actor | None = None  # the authenticated principal (STOW-RS); else the calling AE
    transfer_id: str = field(default_factory=new_transfer_id)
    interrupted: bool = False  # the summary is written after the process died
    counts: Counter[str] = field(default_factory=Counter)
    patients: set[str] = field(default_factory=set)
    studies: set[str] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def stored(self, outcome: IngestOutcome) -> None:
        """Count a stored, duplicate or new-version instance."""
        with self._lock:
            self.counts[outcome.disposition.value] += 1
            self.studies.add(outcome.instance.study_instance_uid)
            if outcome.instance.patient_id:
                self.patients.add(outcome.instance.patient_id)

    def refused(self) -> None:
        """Count an instance that got a failure status."""
        with self._lock:
            self.counts["refused"] += 1

    @property
    def total(self) -> int:
        """Instances offered, whatever became of them."""
        return sum(self.counts.values())

    def event(self, now: datetime) -> PipelineEvent:
        """The summary audit event."""
        with self._lock:
            counts = dict(self.counts)
            patients = sorted(self.patients)
            studies = sorted(self.studies)
        refused = counts.get("refused", 0)
        problems = [f"{refused} instance(s) refused"] if refused else []
        if self.interrupted:
            problems.append("the transfer ended when the gateway stopped")
        detail = {
            "transfer-id": self.transfer_id,
            "transport": self.transport,
            "calling-ae": self.calling_ae,
            "instances": str(sum(counts.values())),
            **{f"count-{k}": str(v) for k, v in sorted(counts.items())},
            "studies": " ".join(studies[:MAX_LISTED]),
            "patients": " ".join(patients[:MAX_LISTED]),
        }
        return PipelineEvent(
            kind=Event.INSTANCES_TRANSFERRED,
            actor=self.actor or sender_actor(self.calling_ae, self.peer_address),
            occurred_at=now,
            outcome="4" if problems else "0",
            outcome_desc="; ".join(problems),
            study_instance_uid=studies[0] if len(studies) == 1 else "",
            patient_id=patients[0] if len(patients) == 1 else "",
            detail=detail,
        )


def audit_transfer(
    engine: Engine, tally: TransferTally, clock: Callable[[], datetime] = _utcnow
) -> None:
    """Write the summary of a finished association or request; nothing when nothing was sent."""
    if tally.total == 0:
        return
    with engine.begin() as conn:
        record_event(conn, tally.event(clock()))
        conn.execute(
            update(instances)
            .where(instances.c.transfer_id == tally.transfer_id)
            .values(transfer_audited=True)
        )


def _alive(transfer_id: str) -> bool:
    parts = transfer_id.split(":")
    host, pid = parts[0], parts[1] if len(parts) > 1 else ""
    if host != socket.gethostname()[:40] or not pid.isdigit():
        return True  # another machine's transfer: its own restart writes the summary
    # Ids written before the run was recorded cannot be told apart: taken as the pid's holder's.
    run = parts[2] if len(parts) == 4 else None
    if int(pid) == os.getpid():
        return run is None or run == _own_run()
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    if run is None or "." not in run:
        return True
    # A run that names its start: the pid's holder now is the same process only if it started
    # then, in this boot (a process that cannot be read is taken as alive).
    holder = _run_of(int(pid), _BOOT)
    return holder is None or holder == run


def audit_interrupted_transfers(
    engine: Engine, clock: Callable[[], datetime] = _utcnow
) -> list[str]:
    """Write the summaries a killed process of this host could not write; returns their ids."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(
                instances.c.transfer_id,
                instances.c.calling_ae,
                instances.c.study_instance_uid,
                studies.c.patient_id,
            )
            .join(
                studies,
                studies.c.study_instance_uid == instances.c.study_instance_uid,
                isouter=True,
            )
            .where(instances.c.transfer_audited.is_(False), instances.c.transfer_id.is_not(None))
        ).all()
    tallies: dict[str, TransferTally] = {}
    alive: dict[str, bool] = {}  # by transfer: its rows share one answer
    for row in rows:
        if row.transfer_id not in alive:
            alive[row.transfer_id] = _alive(row.transfer_id)
        if not alive[row.transfer_id]:
            tally = tallies.setdefault(
                row.transfer_id,
                TransferTally(row.calling_ae, transfer_id=row.transfer_id, interrupted=True),
            )
            with tally._lock:
                tally.counts["stored"] += 1
                tally.studies.add(row.study_instance_uid)
                if row.patient_id:
                    tally.patients.add(row.patient_id)
    for tally in tallies.values():
        audit_transfer(engine, tally, clock)
        log.warning("wrote the transfer summary of interrupted transfer %s", tally.transfer_id)
    return sorted(tallies)
