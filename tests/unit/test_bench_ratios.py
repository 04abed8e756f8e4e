"""The ingest benchmark's round-by-round ratios."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, insert

from bench.ingest import Row, paired_ratios, spread, table
from bench.ingest_receivers import committed_rows
from gateway.persistence.tables import instances, metadata


def _run(receiver: str, seconds: float) -> Row:
    return Row("CT", "C-STORE x4", receiver, 300, 150.0, seconds, 1.0, 200.0, 200.0)


def test_each_round_is_compared_with_the_reference_run_beside_it() -> None:
    gateway = [_run("gateway", 1.0), _run("gateway", 2.0), _run("gateway", 1.5)]
    orthanc = [_run("orthanc", 0.8), _run("orthanc", 1.0), _run("orthanc", 3.0)]

    assert paired_ratios(gateway, orthanc) == pytest.approx([0.8, 0.5, 2.0])


def test_rounds_missing_on_one_side_are_an_error() -> None:
    with pytest.raises(ValueError, match="shorter"):
        paired_ratios([_run("gateway", 1.0)], [])


def test_the_table_shows_each_rows_spread_of_round_by_round_ratios() -> None:
    rows = [_run("gateway", 1.0), _run("orthanc", 1.25)]
    by_round = {("CT", "C-STORE x4", "orthanc"): [0.77, 0.98, 0.88]}

    lines = table(rows, by_round).splitlines()

    gateway, orthanc = lines[2].split(" | "), lines[3].split(" | ")
    assert gateway[10] == "1.25"  # the ratio of the medians
    assert gateway[13] == "0.77-0.98 (0.88)"
    assert orthanc[13] == ""
    assert spread([]) == ""


def _instance_row(n: int) -> dict[str, Any]:
    return {
        "sop_instance_uid": f"1.2.3.{n}",
        "sop_class_uid": "1.2.840.10008.5.1.4.1.1.2",
        "study_instance_uid": "1.2.3",
        "series_instance_uid": "1.2.3.0",
        "transfer_syntax_uid": "1.2.840.10008.1.2.1",
        "path": f"/spool/{n}.dcm",
        "size": 1,
        "sha256": "0" * 64,
        "received_at": datetime.now(UTC),
    }


def test_the_gateways_count_waits_for_rows_answered_before_their_commit(tmp_path: Path) -> None:
    # The sender can exit before the gateway commits its last rows: a count taken at once came
    # up short ("gateway holds 299 of 300 instances") and failed a benchmark round.
    url = f"sqlite:///{tmp_path / 'gateway.db'}"
    engine = create_engine(url)
    metadata.create_all(engine)

    def commit_later() -> None:
        time.sleep(0.3)
        with engine.begin() as conn:
            conn.execute(insert(instances), [_instance_row(n) for n in range(2)])

    late = threading.Thread(target=commit_later)
    late.start()
    try:
        assert committed_rows(url, expected=2) == 2
    finally:
        late.join()
        engine.dispose()


def test_the_gateways_count_gives_up_after_its_timeout(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'gateway.db'}"
    engine = create_engine(url)
    metadata.create_all(engine)
    engine.dispose()

    assert committed_rows(url, expected=1, timeout=0.1) == 0
