"""Version numbers of a received instance when names in the spool are taken or freed again.

A first receipt is spooled as version 1 without asking the database; the transaction checks the
choice. Every test runs on SQLite and on PostgreSQL.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydicom.uid import generate_uid
from sqlalchemy import Engine, select

from gateway.ingest import Disposition, InstanceRecorder, parse_header
from gateway.persistence.tables import instance_attributes, instances
from gateway.settings import Settings
from gateway.spool import Spool
from tests.unit.test_assembly import write_dicom


@pytest.fixture
def recorder(engine: Engine, tmp_path: Path) -> InstanceRecorder:
    """A recorder spooling under the test's directory."""
    return InstanceRecorder(engine, Spool(tmp_path / "spool"), Settings())


def _rows(engine: Engine, sop: str) -> list[tuple[int, str]]:
    with engine.connect() as conn:
        query = select(instances.c.version, instances.c.path).where(
            instances.c.sop_instance_uid == sop
        )
        return sorted((r.version, r.path) for r in conn.execute(query))


def _record(recorder: InstanceRecorder, path: Path) -> tuple[Disposition, int]:
    outcome = recorder.record(path, parse_header(path), "MODALITY", transfer_id="t:1")
    return outcome.disposition, outcome.version


def _orphan(tmp_path: Path, study: str, sop: str) -> Path:
    """A partial version 1 left in the spool by a crash, with no row."""
    orphan = tmp_path / "spool" / study / f"{sop}.1.dcm"
    orphan.parent.mkdir(parents=True)
    orphan.write_bytes(b"partial")
    return orphan


def test_an_orphan_of_a_crash_is_skipped(
    engine: Engine, recorder: InstanceRecorder, tmp_path: Path
) -> None:
    study, sop = generate_uid(), generate_uid()
    orphan = _orphan(tmp_path, study, sop)
    path = write_dicom(tmp_path / "a.dcm", study, sop_uid=sop)
    assert _record(recorder, path) == (Disposition.STORED, 2)
    assert _record(recorder, path) == (Disposition.DUPLICATE, 2)
    assert [v for v, _ in _rows(engine, sop)] == [2]
    assert sorted(p.name for p in orphan.parent.iterdir()) == [f"{sop}.1.dcm", f"{sop}.2.dcm"]


def test_a_freed_name_below_the_latest_version_is_not_reused(
    engine: Engine, recorder: InstanceRecorder, tmp_path: Path
) -> None:
    study, sop = generate_uid(), generate_uid()
    orphan = _orphan(tmp_path, study, sop)
    first = write_dicom(tmp_path / "a.dcm", study, sop_uid=sop)
    assert _record(recorder, first) == (Disposition.STORED, 2)
    orphan.unlink()  # the reaper removed the orphan: version 1's name is free again
    assert _record(recorder, first) == (Disposition.DUPLICATE, 2)
    changed = write_dicom(tmp_path / "b.dcm", study, sop_uid=sop, pixel_seed=1)
    assert _record(recorder, changed) == (Disposition.NEW_VERSION, 3)
    rows = _rows(engine, sop)
    assert [v for v, _ in rows] == [2, 3]
    # Only the recorded versions remain in the spool, each where its row says.
    assert sorted(p.name for p in orphan.parent.iterdir()) == [f"{sop}.2.dcm", f"{sop}.3.dcm"]
    assert all(Path(p).is_file() for _, p in rows)
    with engine.connect() as conn:
        indexed = conn.execute(
            select(instance_attributes.c.version).where(
                instance_attributes.c.sop_instance_uid == sop
            )
        ).scalars()
        assert sorted(indexed) == [2, 3]


def test_many_versions_go_on_above_the_latest(
    engine: Engine, recorder: InstanceRecorder, tmp_path: Path
) -> None:
    study, sop = generate_uid(), generate_uid()
    for seed in range(25):
        path = write_dicom(tmp_path / f"{seed}.dcm", study, sop_uid=sop, pixel_seed=seed)
        expected = Disposition.STORED if seed == 0 else Disposition.NEW_VERSION
        assert _record(recorder, path) == (expected, seed + 1)
    assert _record(recorder, tmp_path / "3.dcm") == (Disposition.DUPLICATE, 4)


def test_the_commit_waits_for_the_adopted_files_fsync(
    engine: Engine, recorder: InstanceRecorder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os
    import threading
    import time

    from sqlalchemy import event

    received = write_dicom(tmp_path / "received.dcm", generate_uid())
    log: list[str] = []
    real_fsync = os.fsync
    statements_ran = threading.Event()

    def slow_fsync(fd: int) -> None:
        if not os.path.isdir(f"/proc/self/fd/{fd}"):
            # The statements run meanwhile; the commit must still wait for this fsync.
            assert statements_ran.wait(5)
            time.sleep(0.2)  # a slow disk: a commit that did not wait would come first
            log.append("file-fsync")
        real_fsync(fd)

    def on_execute(*_args: object) -> None:
        statements_ran.set()

    def on_commit(_conn: object) -> None:
        log.append("commit")

    from gateway.persistence.driver_statement import DriverStatement

    run = DriverStatement._run

    def run_and_tell(*args: Any) -> Any:
        cursor = run(*args)
        statements_ran.set()
        return cursor

    # The hot statements run on the driver's cursor, the others through SQLAlchemy.
    monkeypatch.setattr(DriverStatement, "_run", staticmethod(run_and_tell))
    monkeypatch.setattr(os, "fsync", slow_fsync)
    event.listen(engine, "after_cursor_execute", on_execute)
    event.listen(engine, "commit", on_commit)
    try:
        outcome = recorder.record(
            received, parse_header(received), "MODALITY", transfer_id="t:1", adopt=True
        )
    finally:
        event.remove(engine, "after_cursor_execute", on_execute)
        event.remove(engine, "commit", on_commit)
    assert outcome.disposition is Disposition.STORED
    assert log[:2] == ["file-fsync", "commit"]


def test_a_failed_fsync_records_nothing_and_removes_the_file(
    engine: Engine, recorder: InstanceRecorder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno
    import os

    from gateway.domain.errors import OutOfResources

    received = write_dicom(tmp_path / "received.dcm", generate_uid())
    header = parse_header(received)
    real_fsync = os.fsync

    def full(fd: int) -> None:
        if not os.path.isdir(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OutOfResources):
        recorder.record(received, header, "MODALITY", transfer_id="t:1", adopt=True)
    assert _rows(engine, header.sop_instance_uid) == []
    assert not any(p.is_file() for p in (tmp_path / "spool").rglob("*"))
