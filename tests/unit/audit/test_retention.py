"""Retention: the minimum period, legal holds, and a purge that leaves the chain verifiable."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select, text
from sqlalchemy.exc import DBAPIError

from gateway.audit import trail
from gateway.audit.checkpoint import create_checkpoint
from gateway.audit.retention import (
    RetentionRefused,
    list_holds,
    place_hold,
    purge,
    release_hold,
    retention_cutoff,
)
from gateway.audit.signing import AuditKeyring
from gateway.audit.verify import verify_chain
from gateway.domain.errors import InvalidInput
from gateway.persistence.tables import audit_index, audit_log
from gateway.settings import SettingsError, load_settings
from tests.unit.audit.support import REVIEWER, decision_event

NOW = datetime(2033, 6, 1, 12, 0, tzinfo=UTC)
OLD = datetime(2025, 1, 10, 9, 0, tzinfo=UTC)  # more than 6 years before NOW
YOUNG = datetime(2029, 1, 10, 9, 0, tzinfo=UTC)  # less than 6 years before NOW
BEFORE = datetime(2026, 1, 1, tzinfo=UTC)  # past retention, after every old record


def _seed(engine: Engine) -> None:
    """Records 1-6 old (patients p1, p2 alternating), 7-9 young."""
    with engine.begin() as conn:
        for i in range(6):
            when = OLD + timedelta(days=i)
            trail.record_event(conn, decision_event(f"p{i % 2 + 1}", occurred_at=when))
        for i in range(3):
            trail.record_event(conn, decision_event("p1", occurred_at=YOUNG + timedelta(days=i)))


@pytest.fixture
def keyring(tmp_path: Path) -> AuditKeyring:
    """A fresh signing-key directory."""
    return AuditKeyring(tmp_path / "audit-keys")


def _seqs(engine: Engine) -> list[int]:
    with engine.connect() as conn:
        return list(conn.execute(select(audit_log.c.seq).order_by(audit_log.c.seq)).scalars())


def test_retention_below_six_years_is_refused_at_load(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="below the minimum of 6 years"):
        load_settings(environ={"HITL_GATEWAY_AUDIT__RETENTION_YEARS": "5"})
    config = tmp_path / "gateway.toml"
    config.write_text("[audit]\nretention_years = 3\n")
    with pytest.raises(SettingsError, match="retention_years 3"):
        load_settings(config, environ={})
    assert load_settings(environ={}).audit.retention_years == 6
    assert retention_cutoff(datetime(2032, 2, 29, tzinfo=UTC), 6) == datetime(
        2026, 2, 28, tzinfo=UTC
    )
    with pytest.raises(RetentionRefused):
        retention_cutoff(NOW, 5)


def test_purge_refuses_younger_records_and_changes_nothing(
    audit_engine: Engine, keyring: AuditKeyring
) -> None:
    _seed(audit_engine)
    with pytest.raises(RetentionRefused, match="younger than the retention period"):
        purge(
            audit_engine,
            keyring,
            before=YOUNG,
            retention_years=6,
            actor=REVIEWER,
            now=NOW,
        )
    assert _seqs(audit_engine) == list(range(1, 10))


def test_purge_keeps_held_records_and_the_chain_verifies(
    audit_engine: Engine, keyring: AuditKeyring
) -> None:
    _seed(audit_engine)
    with audit_engine.begin() as conn:
        create_checkpoint(conn, keyring, "manual", now=NOW)  # checkpoint 1 at 9, its event is 10
    hold = place_hold(audit_engine, actor=REVIEWER, reason="litigation 42", patient_id="p2")
    assert [h.id for h in list_holds(audit_engine)] == [hold.id]  # placing it is record 11
    result = purge(
        audit_engine,
        keyring,
        before=BEFORE,
        retention_years=6,
        actor=REVIEWER,
        now=NOW,
    )
    # Old records 1-6: p2's (2, 4, 6) are on hold; 1, 3, 5 go. Young records stay.
    assert (result.through_seq, result.removed, result.kept_on_hold) == (6, 3, 3)
    assert _seqs(audit_engine) == [2, 4, 6, 7, 8, 9, 10, 11, 12, 13]  # 12 bridge event, 13 purge
    report = verify_chain(audit_engine, public_keys=keyring.public_jwks())
    assert report.ok, report.reason
    assert report.purged_through == 6
    with audit_engine.connect() as conn:
        indexed = conn.execute(select(func.min(audit_index.c.seq))).scalar()
        purge_event = json.loads(
            conn.execute(select(audit_log.c.resource).where(audit_log.c.seq == 13)).scalar_one()
        )
    assert indexed == 2
    assert "retention-purge" in json.dumps(purge_event)
    assert purge_event["action"] == "D"

    # Released, the held records go with the next purge; the chain still verifies.
    release_hold(audit_engine, hold.id, actor=REVIEWER)
    assert list_holds(audit_engine) == []
    again = purge(audit_engine, keyring, before=BEFORE, retention_years=6, actor=REVIEWER, now=NOW)
    assert (again.through_seq, again.removed, again.kept_on_hold) == (6, 3, 0)
    assert _seqs(audit_engine)[:2] == [7, 8]
    report = verify_chain(audit_engine, public_keys=keyring.public_jwks())
    assert report.ok, report.reason
    nothing = purge(
        audit_engine, keyring, before=BEFORE, retention_years=6, actor=REVIEWER, now=NOW
    )
    assert nothing.removed == 0


def test_hold_by_period_and_bad_holds(audit_engine: Engine, keyring: AuditKeyring) -> None:
    _seed(audit_engine)
    place_hold(
        audit_engine,
        actor=REVIEWER,
        reason="inquiry",
        period_start=OLD + timedelta(days=4),
        period_end=OLD + timedelta(days=10),
    )
    result = purge(audit_engine, keyring, before=BEFORE, retention_years=6, actor=REVIEWER, now=NOW)
    assert (result.removed, result.kept_on_hold) == (4, 2)
    assert _seqs(audit_engine)[:2] == [5, 6]
    assert verify_chain(audit_engine, public_keys=keyring.public_jwks()).ok
    with pytest.raises(InvalidInput):
        place_hold(audit_engine, actor=REVIEWER, reason="")
    with pytest.raises(InvalidInput):
        place_hold(audit_engine, actor=REVIEWER, reason="nothing named")


def test_deleting_a_held_record_below_the_bridge_is_detected(
    audit_engine: Engine, keyring: AuditKeyring
) -> None:
    _seed(audit_engine)
    place_hold(audit_engine, actor=REVIEWER, reason="litigation", patient_id="p2")
    purge(audit_engine, keyring, before=BEFORE, retention_years=6, actor=REVIEWER, now=NOW)
    # Below a purge the trigger lets rows go, so the signed digest is what catches this.
    with audit_engine.begin() as conn:
        conn.execute(text("DELETE FROM audit_log WHERE seq = 4"))
    report = verify_chain(audit_engine, public_keys=keyring.public_jwks())
    assert not report.ok
    assert "kept below purge bridge 6" in report.reason


def test_database_refuses_deletes_above_the_purge(
    audit_engine: Engine, keyring: AuditKeyring
) -> None:
    _seed(audit_engine)
    purge(audit_engine, keyring, before=BEFORE, retention_years=6, actor=REVIEWER, now=NOW)
    for statement in ("DELETE FROM audit_log WHERE seq = 7", "DELETE FROM audit_purge"):
        with pytest.raises(DBAPIError, match="append-only"), audit_engine.begin() as conn:
            conn.execute(text(statement))
    assert 7 in _seqs(audit_engine)
    with pytest.raises(RetentionRefused):
        purge(audit_engine, keyring, before=YOUNG, retention_years=6, actor=REVIEWER, now=NOW)
