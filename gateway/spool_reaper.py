"""Remove spool files that no instance row refers to: the leftovers of a crash.

A crash between the durable spool write and the database commit leaves a complete file whose
sender never heard success (unless a receiving run's mark still links it: see
gateway.spool_recovery); a crash inside the write leaves a temporary file. Neither is part of
any study. Files younger than the grace period are left alone, since a write in progress on
another replica sharing the volume has not committed yet.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import Engine, select

from gateway.persistence.tables import instances

log = logging.getLogger(__name__)

BATCH = 500


def _candidates(root: Path, older_than: float) -> Iterator[Path]:
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            path = Path(dirpath) / name
            try:
                stat = path.stat()
            except FileNotFoundError:
                continue
            # A second link is a receiving run's mark of a commit still owed to an answered
            # instance: that run, or the start after it, records it (gateway.spool_recovery).
            if stat.st_mtime < older_than and stat.st_nlink < 2:
                yield path


def reap_orphans(
    engine: Engine, root: Path, grace_seconds: float, *, now: float | None = None
) -> list[Path]:
    """Delete unreferenced spool files older than `grace_seconds`; returns what was removed."""
    if not root.exists():
        return []
    cutoff = (time.time() if now is None else now) - grace_seconds
    removed: list[Path] = []
    batch: list[Path] = []

    def flush() -> None:
        with engine.connect() as conn:
            known = set(
                conn.execute(
                    select(instances.c.path).where(instances.c.path.in_([str(p) for p in batch]))
                ).scalars()
            )
        for path in batch:
            if str(path) not in known:
                path.unlink(missing_ok=True)
                removed.append(path)
        batch.clear()

    for path in _candidates(root, cutoff):
        batch.append(path)
        if len(batch) >= BATCH:
            flush()
    if batch:
        flush()
    for path in removed:
        log.warning("removed orphan spool file %s (no instance row refers to it)", path)
    return removed
