"""The `hitl-gateway audit` commands an operator runs: checkpoint, rotate-key, verify, holds,
purge (refused inside the retention period)."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import text

from gateway.audit import trail
from gateway.cli import main
from gateway.persistence.db import make_engine
from gateway.persistence.migrate import upgrade
from gateway.persistence.triggers import drop_retention_triggers
from tests.unit.audit.support import decision_event


@pytest.fixture
def cli_env(database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A migrated database with three records, and the CLI pointed at it."""
    monkeypatch.setenv("HITL_GATEWAY_DATABASE__URL", database_url)
    monkeypatch.setenv("HITL_GATEWAY_STORAGE__DATA_DIR", str(tmp_path / "var"))
    engine = make_engine(database_url)
    upgrade(engine)
    with engine.begin() as conn:
        for _ in range(3):
            trail.record_event(conn, decision_event())
    engine.dispose()
    return database_url


def test_checkpoint_rotate_and_verify(cli_env: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["audit", "checkpoint"]) == 0
    assert "checkpoint 1 signed record 3" in capsys.readouterr().out
    assert main(["audit", "rotate-key"]) == 0
    assert "rotated" in capsys.readouterr().out
    assert main(["audit", "verify"]) == 0
    assert "3 signed checkpoints verified" in capsys.readouterr().out
    engine = make_engine(cli_env)
    with engine.begin() as conn:
        drop_retention_triggers(conn)  # as a superuser would, to forge a checkpoint
        conn.execute(
            text("UPDATE audit_checkpoint SET hash = :h WHERE number = 1"), {"h": "0" * 64}
        )
    engine.dispose()
    assert main(["audit", "verify"]) == 1
    assert "BROKEN" in capsys.readouterr().out


def test_holds_and_a_refused_purge(cli_env: str, capsys: pytest.CaptureFixture[str]) -> None:
    by = ["--by", "Practitioner/compliance-1"]
    assert main(["audit", "hold", "add", "--patient", "pat-1", "--reason", "case 12", *by]) == 0
    hold_id = capsys.readouterr().out.strip()
    assert main(["audit", "hold", "list"]) == 0
    assert hold_id in capsys.readouterr().out
    assert main(["audit", "purge", "--before", "2026-01-01", *by]) == 2
    assert "younger than the retention period" in capsys.readouterr().err
    assert main(["audit", "hold", "release", hold_id, *by]) == 0
    assert main(["audit", "hold", "release", hold_id, *by]) == 2  # no longer active
    assert main(["audit", "purge", "--before", "2019-01-01", *by]) == 0
    assert "purged 0 records" in capsys.readouterr().out
    assert main(["audit", "verify"]) == 0
