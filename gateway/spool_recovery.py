"""Record the instances a crashed run answered before their rows were committed.

The DIMSE receiver answers once an instance's file is durable and its statements ran, while the
shared commit is still under way (gateway.group_commit). Until the row is committed, the file's
received name stays in the receiving run's directory, `<spool>/.incoming/<host:pid:run>/`: a
second link to the spooled file. At start-up each such directory of a run that has ended is
read. A received file linked into the spool whose spool name no row refers to is recorded now,
audited by its own record; anything else there (a data set cut off mid-transfer, a mark whose
row was committed) is removed, and so is the directory.
"""

from __future__ import annotations

import logging
from pathlib import Path

from pydicom.filereader import read_file_meta_info
from sqlalchemy import select

from gateway.dicom_header import ParsedHeader, data_set_offset, parse_header
from gateway.domain.errors import InvalidInput
from gateway.ingest import Disposition, InstanceRecorder
from gateway.persistence.tables import instances
from gateway.spool import Spool, SpooledFile, hash_data_set
from gateway.transfer_audit import run_ended

log = logging.getLogger(__name__)


def receiving_directory(spool_root: Path, run: str) -> Path:
    """Where a run's receivers write data sets as they arrive."""
    return spool_root / ".incoming" / run


def recover_answered(recorder: InstanceRecorder, spool: Spool) -> list[Path]:
    """Record what ended runs left pending; returns the spool files recorded now."""
    incoming = spool.root / ".incoming"
    if not incoming.is_dir():
        return []
    recorded: list[Path] = []
    for run in sorted(incoming.iterdir()):
        if not run.is_dir() or not run_ended(run.name):
            continue
        for mark in sorted(run.iterdir()):
            try:
                twin = _spooled_twin(spool, mark)
                kept = _record(recorder, spool, *twin) if twin is not None else None
                if kept is not None:
                    recorded.append(kept)
            except Exception:
                # Left for the next start; the orphan reaper leaves a linked file alone.
                log.exception("could not recover the received file %s", mark)
                continue
            mark.unlink(missing_ok=True)
        try:
            run.rmdir()
        except OSError:
            log.warning("the receiving directory %s is not empty; kept", run)
    for path in recorded:
        log.warning("recorded %s, answered before a stop that came before its commit", path)
    return recorded


def _spooled_twin(spool: Spool, mark: Path) -> tuple[Path, ParsedHeader] | None:
    """The spool name that shares `mark`'s bytes, if a receiver linked it there, and the
    header of those bytes."""
    stat = mark.stat()
    if stat.st_nlink < 2:
        return None  # never linked into the spool: its sender heard no success
    try:
        header = parse_header(mark)
    except InvalidInput:
        return None
    first = spool.path_for(header.study_instance_uid, header.sop_instance_uid, 1)
    prefix = first.name.rsplit(".", 2)[0] + "."
    for candidate in first.parent.glob(f"{prefix}*.dcm"):
        other = candidate.stat()
        if (other.st_ino, other.st_dev) == (stat.st_ino, stat.st_dev):
            return candidate, header
    return None


def _record(
    recorder: InstanceRecorder, spool: Spool, path: Path, header: ParsedHeader
) -> Path | None:
    """Record the spool file `path` unless a row refers to it; where it is kept, if it was."""
    with recorder.engine.connect() as conn:
        known = conn.execute(
            select(instances.c.sop_instance_uid).where(instances.c.path == str(path))
        ).first()
    if known is not None:
        return None
    meta = read_file_meta_info(path)
    # The receiver wrote the calling AE title as the file's source (PS3.10 7.1).
    calling_ae = str(meta.get("SourceApplicationEntityTitle", "") or "")
    with path.open("rb") as fh:
        size, sha256 = hash_data_set(fh, data_set_offset(path))
    spooled = SpooledFile(path, size, sha256, synced=False)
    version = int(path.name.rsplit(".", 2)[1])
    outcome = recorder.record_in_place(spooled, version, header, calling_ae)
    if outcome is None:
        # A later version with other bytes was recorded meanwhile (another replica): these
        # bytes go above it, as a receipt would.
        outcome = recorder.record(
            path, header, calling_ae, adopt=True, data_set_sha256=spooled.sha256
        )
        spool.discard(path)
    if outcome.disposition is Disposition.DUPLICATE:
        return None  # the same bytes were received again meanwhile; this copy is gone
    return Path(outcome.instance.path)
