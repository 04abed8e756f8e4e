# ruff: noqa: F811  (the engine, recorder and clock fixtures are imported from test_assembly)
"""Study completion rules: expected count, maximum wait, failing studies set aside, duplicates by
data set, orphan reaping and the per-association transfer summary.

Every test that touches the database runs on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
from datetime import timedelta
from pathlib import Path

import pydicom
from pydicom.uid import generate_uid
from sqlalchemy import Engine, select

from gateway import transfer_audit
from gateway.assembly import StudyAssembler
from gateway.domain.model import StudyState
from gateway.ingest import Disposition, InstanceRecorder, data_set_offset, parse_header
from gateway.persistence.tables import audit_log, instances, studies
from gateway.settings import AssemblySettings, Settings
from gateway.spool import Spool
from gateway.spool_reaper import reap_orphans
from gateway.transfer_audit import (
    TransferTally,
    audit_interrupted_transfers,
    audit_transfer,
    new_transfer_id,
)
from tests.unit.test_assembly import (  # noqa: F401  (clock, recorder: fixtures)
    T0,
    Clock,
    _as_utc,
    _store,
    _study,
    clock,
    recorder,
    write_dicom,
)


def _with_expected(path: Path, count: int) -> Path:
    ds = pydicom.dcmread(path)
    ds.NumberOfStudyRelatedInstances = count
    ds.save_as(path)
    return path


def test_the_expected_count_completes_the_study_at_once(
    engine: Engine, recorder: InstanceRecorder, tmp_path: Path, clock: Clock
) -> None:
    study = generate_uid()
    _store(recorder, _with_expected(write_dicom(tmp_path / "1.dcm", study, modality="CT"), 3))
    assert _as_utc(_study(engine, study)["stable_due_at"]) == T0 + timedelta(seconds=60)
    clock.now = T0 + timedelta(seconds=5)
    _store(recorder, _with_expected(write_dicom(tmp_path / "2.dcm", study, modality="CT"), 3))
    assert _study(engine, study)["expected_instances"] == 3
    clock.now = T0 + timedelta(seconds=7)
    # The third instance does not state the count again: the study remembers it.
    _store(recorder, write_dicom(tmp_path / "3.dcm", study, modality="CT"))
    row = _study(engine, study)
    assert row["instance_count"] == 3
    assert _as_utc(row["stable_due_at"]) == clock.now
    claimed = StudyAssembler(engine, "w1", 30).claim_due(clock.now)
    assert [c.study_instance_uid for c in claimed] == [study]


def test_a_trickling_study_is_stable_at_the_maximum_wait(
    engine: Engine, tmp_path: Path, clock: Clock
) -> None:
    settings = Settings(assembly=AssemblySettings(stable_seconds=10, max_wait_seconds=25))
    recorder = InstanceRecorder(engine, Spool(tmp_path / "spool"), settings, clock=clock)
    study = generate_uid()
    for second in (0, 8, 16, 24):
        clock.now = T0 + timedelta(seconds=second)
        _store(recorder, write_dicom(tmp_path / f"{second}.dcm", study))
    # Quiet would end at 34 s; the maximum wait ends it at 25 s.
    assert _as_utc(_study(engine, study)["stable_due_at"]) == T0 + timedelta(seconds=25)
    assembler = StudyAssembler(engine, "w1", 30)
    assert assembler.claim_due(T0 + timedelta(seconds=24)) == []
    assert len(assembler.claim_due(T0 + timedelta(seconds=25))) == 1


def test_a_reopened_study_gets_a_fresh_maximum_wait(
    engine: Engine, tmp_path: Path, clock: Clock
) -> None:
    settings = Settings(assembly=AssemblySettings(stable_seconds=10, max_wait_seconds=25))
    recorder = InstanceRecorder(engine, Spool(tmp_path / "spool"), settings, clock=clock)
    study = generate_uid()
    _store(recorder, write_dicom(tmp_path / "a.dcm", study))
    assembler = StudyAssembler(engine, "w1", 30, clock=clock)
    assert assembler.claim_due(T0 + timedelta(seconds=10))
    with engine.begin() as conn:
        assert assembler.mark_done(conn, study, StudyState.SCORED)
    clock.now = T0 + timedelta(hours=1)
    _store(recorder, write_dicom(tmp_path / "late.dcm", study))
    row = _study(engine, study)
    assert row["state"] == StudyState.RECEIVING.value
    assert _as_utc(row["stable_due_at"]) == clock.now + timedelta(seconds=10)


def test_a_study_whose_scoring_keeps_failing_never_blocks_the_next(
    engine: Engine, recorder: InstanceRecorder, tmp_path: Path
) -> None:
    broken, fresh = generate_uid(), generate_uid()
    _store(recorder, write_dicom(tmp_path / "b.dcm", broken))
    assembler = StudyAssembler(engine, "w1", lease_seconds=5, batch_size=1, max_claim_attempts=2)
    now = T0 + timedelta(seconds=10)
    assert [c.study_instance_uid for c in assembler.claim_due(now)] == [broken]
    # The worker dies; the lease expires; meanwhile another study becomes stable.
    _store(recorder, write_dicom(tmp_path / "f.dcm", fresh))
    now += timedelta(seconds=30)
    assert [c.study_instance_uid for c in assembler.claim_due(now)] == [fresh]
    assert [c.study_instance_uid for c in assembler.claim_due(now)] == [broken]
    now += timedelta(seconds=30)
    # Second expiry: the limit is reached, the study keeps standard triage, and it is audited.
    assert [c.study_instance_uid for c in assembler.claim_due(now)] == [fresh]
    assert _study(engine, broken)["state"] == StudyState.STANDARD_TRIAGE.value
    with engine.connect() as conn:
        docs = [json.loads(r) for r in conn.execute(select(audit_log.c.resource)).scalars()]
    assert any("set aside" in d.get("outcomeDesc", "") for d in docs)


def test_the_same_instance_with_other_file_meta_is_a_duplicate(
    engine: Engine, recorder: InstanceRecorder, tmp_path: Path
) -> None:
    original = write_dicom(tmp_path / "a.dcm", generate_uid())
    ds = pydicom.dcmread(original)
    # What another route (STOW-RS, a forwarding PACS) changes: only group 0002.
    ds.file_meta.SourceApplicationEntityTitle = "ORTHANC"
    ds.file_meta.ImplementationVersionName = "OTHER_1.0"
    other = tmp_path / "b.dcm"
    ds.save_as(other)
    assert other.read_bytes() != original.read_bytes()
    assert data_set_offset(other) != data_set_offset(original)
    assert (
        other.read_bytes()[data_set_offset(other) :]
        == original.read_bytes()[data_set_offset(original) :]
    )
    assert _store(recorder, original) is Disposition.STORED
    assert _store(recorder, other) is Disposition.DUPLICATE
    with engine.connect() as conn:
        assert len(conn.execute(select(instances)).all()) == 1


def test_orphans_of_a_crash_are_reaped_and_referenced_files_kept(
    engine: Engine, recorder: InstanceRecorder, tmp_path: Path
) -> None:
    kept = recorder.record(
        p := write_dicom(tmp_path / "a.dcm", generate_uid()), parse_header(p), "MOD"
    )
    root = tmp_path / "spool"
    orphan = Spool(root).store_file(p.read_bytes(), generate_uid(), generate_uid(), 1).path
    partial = root / "x" / ".y.dcm.abc.tmp"
    partial.parent.mkdir()
    partial.write_bytes(b"half")
    young = Spool(root).store_file(b"new", generate_uid(), generate_uid(), 1).path
    old = T0.timestamp()
    for path in (orphan, partial, Path(kept.instance.path)):
        os.utime(path, (old, old))
    os.utime(young, (old + 3500, old + 3500))
    removed = reap_orphans(engine, root, 600, now=old + 3600)
    assert sorted(removed) == sorted([orphan, partial])
    assert Path(kept.instance.path).exists()
    assert young.exists()


def test_one_transfer_summary_per_association(
    engine: Engine, recorder: InstanceRecorder, tmp_path: Path
) -> None:
    study = generate_uid()
    tally = TransferTally("MODALITY", "10.0.0.9")
    for name, patient in (("a", "P1"), ("b", "P2")):
        path = write_dicom(tmp_path / f"{name}.dcm", study, patient_id=patient)
        tally.stored(recorder.record(path, parse_header(path), "MODALITY"))
    tally.refused()
    audit_transfer(engine, tally, lambda: T0)
    audit_transfer(engine, TransferTally("IDLE"), lambda: T0)  # nothing sent: nothing written
    with engine.connect() as conn:
        docs = [json.loads(r) for r in conn.execute(select(audit_log.c.resource)).scalars()]
    summaries = [d for d in docs if "instances-transferred" in json.dumps(d)]
    assert len(summaries) == 1
    text = json.dumps(summaries[0])
    for expected in ('"3"', "P1 P2", "MODALITY", "count-refused", study):
        assert expected in text
    assert summaries[0]["type"]["code"] == "110104"
    with engine.connect() as conn:
        assert conn.execute(select(studies.c.claim_attempts)).scalar_one() == 0


def test_an_earlier_process_with_this_pid_leaves_its_transfers_to_be_summarised(
    engine: Engine, recorder: InstanceRecorder, tmp_path: Path
) -> None:
    # A container restarted in place runs the gateway again as the same pid on the same host:
    # the earlier process's transfers were taken as this one's and never summarised.
    study = generate_uid()
    ours = new_transfer_id()
    host, pid, incarnation, _random = ours.split(":")
    other = "00000000" if incarnation != "00000000" else "11111111"
    earlier = f"{host}:{pid}:{other}:1234"
    for n, transfer in enumerate((earlier, ours)):
        path = write_dicom(tmp_path / f"{n}.dcm", study, patient_id="P8")
        recorder.record(path, parse_header(path), "MODALITY", transfer_id=transfer)
    assert len(ours) <= 80
    assert audit_interrupted_transfers(engine, lambda: T0) == [earlier]
    with engine.connect() as conn:
        marks = dict(
            conn.execute(select(instances.c.transfer_id, instances.c.transfer_audited)).all()
        )
    assert marks == {earlier: True, ours: False}


def test_a_pid_now_held_by_another_program_leaves_its_transfers_to_be_summarised(
    engine: Engine, recorder: InstanceRecorder, tmp_path: Path
) -> None:
    # The process that received died and an unrelated program got its pid: its transfers were
    # taken as alive and their summaries waited for a later start, and another, and another.
    other = subprocess.Popen(["sleep", "60"])
    try:
        study = generate_uid()
        host, _pid, run, _random = new_transfer_id().split(":")
        boot, _start = run.split(".")
        dead_holder = f"{host}:{other.pid}:{boot}.1:0123456789ab"
        holder_now = f"{host}:{other.pid}:{transfer_audit._run_of(other.pid, boot)}:ba9876543210"
        older_id = f"{host}:{other.pid}:abcdef01:0123456789abcdef"  # no start recorded
        for n, transfer in enumerate((dead_holder, holder_now, older_id)):
            path = write_dicom(tmp_path / f"{n}.dcm", study, patient_id="P7")
            recorder.record(path, parse_header(path), "MODALITY", transfer_id=transfer)
            assert len(transfer) <= 80
        assert audit_interrupted_transfers(engine, lambda: T0) == [dead_holder]
    finally:
        other.kill()
        other.wait()
    # Once the program has gone, the rest are summarised too.
    assert audit_interrupted_transfers(engine, lambda: T0) == sorted([holder_now, older_id])


def test_a_killed_process_leaves_its_transfers_to_be_summarised_at_the_next_start(
    engine: Engine, recorder: InstanceRecorder, tmp_path: Path
) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    study = generate_uid()
    host = socket.gethostname()[:40]
    killed = f"{host}:{dead.pid}:abc"
    running = f"{host}:{os.getpid()}:def"
    for n, transfer in enumerate((killed, killed, running)):
        path = write_dicom(tmp_path / f"{n}.dcm", study, patient_id="P9")
        recorder.record(path, parse_header(path), "MODALITY", transfer_id=transfer)
    with engine.connect() as conn:
        # Plain receipts inside a transfer have no record of their own.
        assert "instance-stored" not in " ".join(
            conn.execute(select(audit_log.c.resource)).scalars()
        )
    assert audit_interrupted_transfers(engine, lambda: T0) == [killed]
    assert audit_interrupted_transfers(engine, lambda: T0) == []
    with engine.connect() as conn:
        marks = dict(
            conn.execute(select(instances.c.transfer_id, instances.c.transfer_audited)).all()
        )
        text = " ".join(conn.execute(select(audit_log.c.resource)).scalars())
    assert marks == {killed: True, running: False}
    assert "ended when the gateway stopped" in text
    assert "P9" in text
