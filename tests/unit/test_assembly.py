"""Instance stored → study stable: recording, exactly-once claims, leases and late instances.

Every test runs on SQLite and on PostgreSQL (`database_url` from tests/conftest.py).
"""

from __future__ import annotations

import threading
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid
from sqlalchemy import Engine, func, select

from gateway.assembly import StudyAssembler
from gateway.domain.errors import IllegalTransition, InvalidInput
from gateway.domain.model import StudyState
from gateway.ingest import Disposition, InstanceRecorder, ParsedHeader, parse_header
from gateway.persistence.tables import audit_log, instances, studies
from gateway.settings import Settings
from gateway.spool import Spool

T0 = datetime(2030, 1, 1, 8, 0, tzinfo=UTC)
DX_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.1.1"
CT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.2"


def write_dicom(
    path: Path,
    study_uid: str,
    *,
    sop_uid: str | None = None,
    modality: str = "DX",
    pixel_seed: int = 0,
    patient_id: str = "PAT-1",
) -> Path:
    """A small valid Part 10 file with a few hundred bytes of pixels."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(DX_SOP_CLASS if modality == "DX" else CT_SOP_CLASS)
    meta.MediaStorageSOPInstanceUID = UID(sop_uid) if sop_uid else generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = modality
    ds.PatientID = patient_id
    ds.PatientName = "Test^Patient"
    ds.AccessionNumber = "ACC-1"
    ds.AdmissionID = "ENC-1"
    ds.Rows = ds.Columns = 16
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.SamplesPerPixel = 1
    ds.PixelRepresentation = 0
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelData = bytes((i + pixel_seed) % 256 for i in range(256))
    ds.save_as(path, enforce_file_format=True)
    return path


class Clock:
    """A settable clock for the recorder."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock(T0)


@pytest.fixture
def recorder(engine: Engine, tmp_path: Path, clock: Clock) -> InstanceRecorder:
    return InstanceRecorder(engine, Spool(tmp_path / "spool"), Settings(), clock=clock)


def _store(recorder: InstanceRecorder, path: Path, ae: str = "MODALITY") -> Disposition:
    return recorder.record(path, parse_header(path), ae, peer_address="127.0.0.1").disposition


def _study(engine: Engine, uid: str) -> dict[str, object]:
    with engine.connect() as conn:
        row = conn.execute(select(studies).where(studies.c.study_instance_uid == uid)).one()
    return dict(row._mapping)


def _count(engine: Engine, table: object) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())  # type: ignore[arg-type]


def _as_utc(value: object) -> datetime:
    assert isinstance(value, datetime)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


# --- instance stored -------------------------------------------------------------------------


def test_header_parsing_reads_the_context(tmp_path: Path) -> None:
    study = generate_uid()
    header = parse_header(write_dicom(tmp_path / "a.dcm", study))
    assert header.study_instance_uid == study
    assert (header.patient_id, header.accession_number, header.encounter_id) == (
        "PAT-1",
        "ACC-1",
        "ENC-1",
    )
    assert header.transfer_syntax_uid == ExplicitVRLittleEndian


def test_unparsable_or_incomplete_files_are_invalid_input(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.dcm"
    garbage.write_bytes(b"\x00" * 128 + b"DICM" + b"\xff" * 300)
    with pytest.raises(InvalidInput):
        parse_header(garbage)
    not_dicom = tmp_path / "text.dcm"
    not_dicom.write_bytes(b"hello world")
    with pytest.raises(InvalidInput):
        parse_header(not_dicom)
    incomplete = write_dicom(tmp_path / "b.dcm", generate_uid())
    ds = pydicom.dcmread(incomplete)
    del ds.StudyInstanceUID
    ds.save_as(incomplete)
    with pytest.raises(InvalidInput, match="StudyInstanceUID"):
        parse_header(incomplete)


def test_first_instance_opens_the_study_with_the_modality_quiet_period(
    engine: Engine, recorder: InstanceRecorder, tmp_path: Path
) -> None:
    dx, ct = generate_uid(), generate_uid()
    assert _store(recorder, write_dicom(tmp_path / "dx.dcm", dx)) is Disposition.STORED
    assert _store(recorder, write_dicom(tmp_path / "ct.dcm", ct, modality="CT")) is (
        Disposition.STORED
    )
    row = _study(engine, dx)
    assert row["state"] == StudyState.RECEIVING.value
    assert row["instance_count"] == 1
    assert (row["patient_id"], row["accession_number"], row["encounter_id"]) == (
        "PAT-1",
        "ACC-1",
        "ENC-1",
    )
    assert _as_utc(row["stable_due_at"]) == T0 + timedelta(seconds=10)
    assert _as_utc(_study(engine, ct)["stable_due_at"]) == T0 + timedelta(seconds=60)
    assert _count(engine, audit_log) == 2


def test_identical_resend_is_success_without_a_new_row(
    engine: Engine, recorder: InstanceRecorder, tmp_path: Path
) -> None:
    path = write_dicom(tmp_path / "a.dcm", generate_uid())
    assert _store(recorder, path) is Disposition.STORED
    assert _store(recorder, path) is Disposition.DUPLICATE
    assert _count(engine, instances) == 1
    assert len(list((tmp_path / "spool").rglob("*.dcm"))) == 1
    assert _count(engine, audit_log) == 2  # each transfer is audited


def test_different_bytes_for_the_same_instance_are_a_new_version(
    engine: Engine, recorder: InstanceRecorder, tmp_path: Path
) -> None:
    study, sop = generate_uid(), generate_uid()
    _store(recorder, write_dicom(tmp_path / "a.dcm", study, sop_uid=sop))
    changed = write_dicom(tmp_path / "b.dcm", study, sop_uid=sop, pixel_seed=1)
    outcome = recorder.record(changed, parse_header(changed), "MODALITY")
    assert (outcome.disposition, outcome.version, outcome.is_warning) == (
        Disposition.NEW_VERSION,
        2,
        True,
    )
    assert _count(engine, instances) == 2
    assert _study(engine, study)["instance_count"] == 1


def test_a_crash_orphan_does_not_block_the_next_version(
    engine: Engine, recorder: InstanceRecorder, tmp_path: Path
) -> None:
    study, sop = generate_uid(), generate_uid()
    orphan = Spool(tmp_path / "spool").store_file(b"left by a crash", study, sop, 1)
    outcome = recorder.record(
        write_dicom(tmp_path / "a.dcm", study, sop_uid=sop),
        parse_header(tmp_path / "a.dcm"),
        "MODALITY",
    )
    assert outcome.version == 2
    assert orphan.path.read_bytes() == b"left by a crash"


# --- study stable ----------------------------------------------------------------------------


def test_a_study_is_claimed_once_after_its_quiet_period(
    engine: Engine, recorder: InstanceRecorder, tmp_path: Path
) -> None:
    study = generate_uid()
    _store(recorder, write_dicom(tmp_path / "a.dcm", study))
    _store(recorder, write_dicom(tmp_path / "b.dcm", study))
    assembler = StudyAssembler(engine, "w1", lease_seconds=30)
    assert assembler.claim_due(T0 + timedelta(seconds=9)) == []
    claimed = assembler.claim_due(T0 + timedelta(seconds=11))
    assert [c.study_instance_uid for c in claimed] == [study]
    assert claimed[0].patient_id == "PAT-1"
    assert claimed[0].encounter_id == "ENC-1"
    assert len(claimed[0].instance_paths) == 2
    assert all(Path(p).exists() for p in claimed[0].instance_paths)
    assert assembler.claim_due(T0 + timedelta(seconds=12)) == []
    assert StudyAssembler(engine, "w2", 30).claim_due(T0 + timedelta(seconds=12)) == []
    row = _study(engine, study)
    assert (row["state"], row["lease_owner"]) == (StudyState.SCORING.value, "w1")
    assert _count(engine, audit_log) == 3  # two instances stored, one study stable


def test_claim_returns_the_latest_version_of_each_instance(
    engine: Engine, recorder: InstanceRecorder, tmp_path: Path
) -> None:
    study, sop = generate_uid(), generate_uid()
    _store(recorder, write_dicom(tmp_path / "a.dcm", study, sop_uid=sop))
    _store(recorder, write_dicom(tmp_path / "b.dcm", study, sop_uid=sop, pixel_seed=3))
    (claimed,) = StudyAssembler(engine, "w1", 30).claim_due(T0 + timedelta(minutes=1))
    assert [Path(p).name for p in claimed.instance_paths] == [f"{sop}.2.dcm"]


def test_concurrent_claimers_share_the_studies_without_overlap(
    engine: Engine, recorder: InstanceRecorder, tmp_path: Path
) -> None:
    uids = {generate_uid() for _ in range(24)}
    for n, uid in enumerate(uids):
        _store(recorder, write_dicom(tmp_path / f"{n}.dcm", uid))
    due = T0 + timedelta(minutes=1)
    results: dict[str, list[str]] = {}
    barrier = threading.Barrier(4)

    def claimer(name: str) -> None:
        assembler = StudyAssembler(engine, name, 30, batch_size=3)
        barrier.wait()
        got: list[str] = []
        while batch := assembler.claim_due(due):
            got.extend(c.study_instance_uid for c in batch)
        results[name] = got

    threads = [threading.Thread(target=claimer, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    claimed = [uid for got in results.values() for uid in got]
    assert sorted(claimed) == sorted(uids)  # every study once, none twice


def test_an_expired_lease_is_taken_over(
    engine: Engine, recorder: InstanceRecorder, tmp_path: Path
) -> None:
    study = generate_uid()
    _store(recorder, write_dicom(tmp_path / "a.dcm", study))
    first, second = StudyAssembler(engine, "w1", 30), StudyAssembler(engine, "w2", 30)
    claim_time = T0 + timedelta(seconds=11)
    assert len(first.claim_due(claim_time)) == 1
    assert second.claim_due(claim_time + timedelta(seconds=29)) == []
    assert len(second.claim_due(claim_time + timedelta(seconds=31))) == 1
    with engine.begin() as conn:
        assert not first.mark_done(conn, study, StudyState.SCORED)
        assert second.mark_done(conn, study, StudyState.SCORED)
    row = _study(engine, study)
    assert (row["state"], row["lease_owner"]) == (StudyState.SCORED.value, None)


def test_a_late_instance_reopens_a_scored_study(
    engine: Engine, recorder: InstanceRecorder, tmp_path: Path, clock: Clock
) -> None:
    study = generate_uid()
    _store(recorder, write_dicom(tmp_path / "a.dcm", study))
    assembler = StudyAssembler(engine, "w1", 30)
    assembler.claim_due(T0 + timedelta(seconds=11))
    with engine.begin() as conn:
        assert assembler.mark_done(conn, study, StudyState.SCORED)
    clock.now = T0 + timedelta(minutes=5)
    _store(recorder, write_dicom(tmp_path / "b.dcm", study))
    row = _study(engine, study)
    assert row["state"] == StudyState.RECEIVING.value
    assert _as_utc(row["stable_due_at"]) == clock.now + timedelta(seconds=10)
    (again,) = assembler.claim_due(clock.now + timedelta(seconds=11))
    assert len(again.instance_paths) == 2


def test_a_late_instance_while_scoring_voids_the_running_result(
    engine: Engine, recorder: InstanceRecorder, tmp_path: Path, clock: Clock
) -> None:
    study = generate_uid()
    _store(recorder, write_dicom(tmp_path / "a.dcm", study))
    assembler = StudyAssembler(engine, "w1", 30)
    assembler.claim_due(T0 + timedelta(seconds=11))
    clock.now = T0 + timedelta(seconds=12)
    _store(recorder, write_dicom(tmp_path / "b.dcm", study))
    with engine.begin() as conn:
        assert not assembler.mark_done(conn, study, StudyState.SCORED)
    assert _study(engine, study)["state"] == StudyState.RECEIVING.value


def test_a_claim_cannot_end_in_a_non_final_state(engine: Engine) -> None:
    with engine.begin() as conn, pytest.raises(IllegalTransition):
        StudyAssembler(engine, "w1", 30).mark_done(conn, "1.2.3", StudyState.RECEIVING)


def test_parsed_header_is_immutable() -> None:
    header = ParsedHeader("1.2", "1.2.3", "1.2.4", "1.2.5", ExplicitVRLittleEndian)
    assert replace(header, modality="CT").modality == "CT"
    with pytest.raises(AttributeError):
        header.modality = "CT"  # type: ignore[misc]


def test_a_poll_that_finds_nothing_due_takes_no_write_transaction(
    engine: Engine, recorder: InstanceRecorder, tmp_path: Path
) -> None:
    # The poll runs every half second while instances are committed: on SQLite every BEGIN
    # takes the one write lock those commits need.
    from sqlalchemy import event

    study = generate_uid()
    _store(recorder, write_dicom(tmp_path / "a.dcm", study))
    begins: list[int] = []
    event.listen(engine, "begin", lambda _conn: begins.append(1))
    assembler = StudyAssembler(engine, "w1", lease_seconds=30)
    assert assembler.claim_due(T0 + timedelta(seconds=9)) == []
    assert begins == []
    assert [c.study_instance_uid for c in assembler.claim_due(T0 + timedelta(seconds=11))] == [
        study
    ]
    assert begins  # a due study is claimed in a write transaction, as before
    begins.clear()
    # A lease that ran out is due again (claimed by another worker).
    claimed = StudyAssembler(engine, "w2", 30).claim_due(T0 + timedelta(seconds=42))
    assert [c.study_instance_uid for c in claimed] == [study]
