"""Start-up recovery of instances a crashed run answered before their rows were committed.

Every test runs on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid
from sqlalchemy import Engine, select

from gateway.audit.trail import search
from gateway.ingest import InstanceRecorder, parse_header
from gateway.persistence.tables import instances
from gateway.settings import Settings
from gateway.spool import Spool
from gateway.spool_reaper import reap_orphans
from gateway.spool_recovery import receiving_directory, recover_answered
from gateway.transfer_audit import receiving_run
from tests.unit.test_assembly import write_dicom


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    """The spool under the test's directory."""
    return Spool(tmp_path / "spool")


@pytest.fixture
def recorder(engine: Engine, spool: Spool) -> InstanceRecorder:
    """A recorder on that spool."""
    return InstanceRecorder(engine, spool, Settings())


def _ended_run() -> str:
    """The run name of a process of this host that has exited."""
    child = subprocess.Popen(["true"])
    child.wait()
    return f"{socket.gethostname()[:40]}:{child.pid}:deadbeef"


def _received(directory: Path, study: str, sop: str, seed: int = 0) -> Path:
    """A data set as the DIMSE receiver writes it: the calling AE title as the file's source."""
    directory.mkdir(parents=True, exist_ok=True)
    path = write_dicom(directory / f".dimse-{sop[-8:]}.part", study, sop_uid=sop, pixel_seed=seed)
    ds = dcmread(path)
    ds.file_meta.SourceApplicationEntityTitle = "MODALITY"
    ds.save_as(path, enforce_file_format=True)
    return path


def _answered_not_committed(spool: Spool, run: str, study: str, sop: str) -> tuple[Path, Path]:
    """The mark and the spool file a run leaves when it dies between its answer and commit."""
    mark = _received(receiving_directory(spool.root, run), study, sop)
    spooled = spool.path_for(study, sop, 1)
    spooled.parent.mkdir(parents=True, exist_ok=True)
    os.link(mark, spooled)
    return mark, spooled


def _rows(engine: Engine, sop: str) -> list[tuple[int, str, str]]:
    with engine.connect() as conn:
        query = select(instances.c.version, instances.c.path, instances.c.calling_ae).where(
            instances.c.sop_instance_uid == sop
        )
        return sorted(tuple(r) for r in conn.execute(query))


def test_an_answered_instance_of_an_ended_run_is_recorded_with_its_audit_record(
    engine: Engine, recorder: InstanceRecorder, spool: Spool
) -> None:
    run, study, sop = _ended_run(), generate_uid(), generate_uid()
    mark, spooled = _answered_not_committed(spool, run, study, sop)
    assert recover_answered(recorder, spool) == [spooled]
    assert _rows(engine, sop) == [(1, str(spooled), "MODALITY")]
    assert spooled.is_file()
    assert os.stat(spooled).st_nlink == 1
    assert not mark.exists()
    assert not mark.parent.exists()
    with engine.connect() as conn:
        events = [json.dumps(e) for e in search(conn, "AuditEvent", limit=1000)]
    assert any(sop in e and "MODALITY" in e for e in events)
    # Nothing is left for a second start to do.
    assert recover_answered(recorder, spool) == []
    assert len(_rows(engine, sop)) == 1


def test_a_mark_whose_row_was_committed_and_a_cut_off_data_set_are_only_removed(
    engine: Engine, recorder: InstanceRecorder, spool: Spool
) -> None:
    run, study = _ended_run(), generate_uid()
    directory = receiving_directory(spool.root, run)
    sop = generate_uid()
    source = _received(spool.root / ".elsewhere", study, sop)
    outcome = recorder.record(source, parse_header(source), "MODALITY", adopt=True)
    directory.mkdir(parents=True)
    os.link(outcome.instance.path, directory / "committed.part")  # died before the unlink
    cut_off = _received(directory, study, generate_uid())  # never linked into the spool
    assert recover_answered(recorder, spool) == []
    assert _rows(engine, sop) == [(1, outcome.instance.path, "MODALITY")]
    assert not cut_off.exists()
    assert not directory.exists()
    assert Path(outcome.instance.path).is_file()


def test_a_living_run_is_left_alone(
    engine: Engine, recorder: InstanceRecorder, spool: Spool
) -> None:
    study, sop = generate_uid(), generate_uid()
    mark, spooled = _answered_not_committed(spool, receiving_run(), study, sop)
    assert recover_answered(recorder, spool) == []
    assert mark.exists()
    assert spooled.exists()
    assert _rows(engine, sop) == []


def test_bytes_received_again_after_the_crash_are_not_recorded_twice(
    engine: Engine, recorder: InstanceRecorder, spool: Spool, tmp_path: Path
) -> None:
    run, study, sop = _ended_run(), generate_uid(), generate_uid()
    mark, spooled = _answered_not_committed(spool, run, study, sop)
    again = tmp_path / "again.dcm"
    again.write_bytes(mark.read_bytes())
    resent = recorder.record(again, parse_header(again), "MODALITY")
    assert resent.version == 2  # version 1's name is held by the pending file
    assert recover_answered(recorder, spool) == []  # a duplicate: its copy goes
    assert _rows(engine, sop) == [(2, resent.instance.path, "MODALITY")]
    assert not spooled.exists()


def test_other_bytes_recorded_meanwhile_keep_both_versions(
    engine: Engine, recorder: InstanceRecorder, spool: Spool, tmp_path: Path
) -> None:
    run, study, sop = _ended_run(), generate_uid(), generate_uid()
    _mark, spooled = _answered_not_committed(spool, run, study, sop)
    changed = _received(tmp_path / "changed", study, sop, seed=1)
    newer = recorder.record(changed, parse_header(changed), "MODALITY")
    assert newer.version == 2
    recovered = recover_answered(recorder, spool)
    rows = _rows(engine, sop)
    # Received before the newer bytes but recorded after them: above them, as a resend would be.
    assert [v for v, _, _ in rows] == [2, 3]
    assert recovered == [Path(rows[1][1])]
    assert all(Path(p).is_file() for _, p, _ in rows)
    assert not spooled.exists()


def test_the_orphan_reaper_leaves_a_file_a_receiving_run_still_links(
    engine: Engine, spool: Spool
) -> None:
    mark, spooled = _answered_not_committed(spool, receiving_run(), generate_uid(), generate_uid())
    old = time.time() - 7200
    for path in (mark, spooled):
        os.utime(path, (old, old))
    assert reap_orphans(engine, spool.root, 600) == []
    assert mark.exists()
    assert spooled.exists()
