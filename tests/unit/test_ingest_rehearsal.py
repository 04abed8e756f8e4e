"""The start-up rehearsal of the record path: it runs every statement and keeps nothing.

Runs on SQLite and on PostgreSQL.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Engine, func, select

from gateway.audit.verify import verify_chain
from gateway.ingest import Disposition, InstanceRecorder, parse_header
from gateway.ingest_rehearsal import rehearsal_data_set, rehearse_ingest
from gateway.persistence.tables import metadata
from gateway.settings import Settings
from gateway.spool import Spool, SpooledFile
from tests.unit.test_assembly import write_dicom


def _everything(engine: Engine) -> dict[str, Any]:
    with engine.connect() as conn:
        return {
            name: (
                conn.execute(select(func.count()).select_from(table)).scalar_one(),
                sorted(map(tuple, conn.execute(select(table)))) if name == "audit_head" else None,
            )
            for name, table in metadata.tables.items()
        }


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def test_the_rehearsal_leaves_database_and_spool_as_they_were(
    engine: Engine, tmp_path: Path
) -> None:
    spool_dir = tmp_path / "spool"
    recorder = InstanceRecorder(engine, Spool(spool_dir), Settings())
    earlier = write_dicom(tmp_path / "a.dcm", "1.2.3.4")
    recorder.record(earlier, parse_header(earlier), "MODALITY", transfer_id="t:1")
    before, files = _everything(engine), _files(spool_dir)

    rehearse_ingest(recorder, spool_dir / ".incoming")

    assert _everything(engine) == before
    assert _files(spool_dir) == files
    # The chain goes on from where it was: the next record appends and verifies.
    later = write_dicom(tmp_path / "b.dcm", "1.2.3.5")
    outcome = recorder.record(later, parse_header(later), "MODALITY")
    assert outcome.disposition is Disposition.STORED
    report = verify_chain(engine)
    assert report.ok, report.reason
    assert report.records == before["audit_log"][0] + 1


def test_the_rehearsal_runs_the_transfer_path_with_its_statements(
    engine: Engine, tmp_path: Path
) -> None:
    recorder = InstanceRecorder(engine, Spool(tmp_path / "spool"), Settings())
    summarised: list[Disposition] = []
    path = tmp_path / "r.dcm"
    rehearsal_data_set().save_as(path, enforce_file_format=True)
    header = parse_header(path)
    assert header.expected_instances == 1
    assert header.attributes  # the DICOMweb index is exercised too

    outcome = recorder.rehearse(
        header,
        SpooledFile(path, path.stat().st_size, "0" * 64),
        lambda conn, o: summarised.append(o.disposition),
    )

    assert outcome.disposition is Disposition.STORED
    assert summarised == [Disposition.STORED]
