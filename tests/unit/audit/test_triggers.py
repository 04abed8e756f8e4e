"""The database itself refuses changes to the audit trail."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError

from gateway.audit import trail
from gateway.persistence.triggers import install_append_only_triggers
from tests.unit.audit.support import decision_event


@pytest.fixture
def filled(audit_engine: Engine) -> Engine:
    """A trail holding two records."""
    with audit_engine.begin() as conn:
        trail.record_event(conn, decision_event())
        trail.record_event(conn, decision_event())
    return audit_engine


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE audit_log SET patient_id = 'someone-else' WHERE seq = 1",
        "UPDATE audit_log SET seq = 3 WHERE seq = 2",
        "DELETE FROM audit_log WHERE seq = 2",
        "DELETE FROM audit_log",
        "DELETE FROM audit_head",
        "UPDATE audit_head SET seq = 1",
        "UPDATE audit_head SET seq = 5",
    ],
)
def test_changes_are_refused(filled: Engine, statement: str) -> None:
    with pytest.raises(DBAPIError, match="append-only"), filled.begin() as conn:
        conn.execute(text(statement))


def test_truncate_is_refused_on_postgresql(pg_audit_engine: Engine) -> None:
    with pg_audit_engine.begin() as conn:
        trail.record_event(conn, decision_event())
    for table in ("audit_log", "audit_head"):
        with pytest.raises(DBAPIError, match="append-only"), pg_audit_engine.begin() as conn:
            conn.execute(text(f"TRUNCATE {table}"))


def test_install_is_idempotent(filled: Engine) -> None:
    with filled.begin() as conn:
        install_append_only_triggers(conn)
        trail.record_event(conn, decision_event())
    with pytest.raises(DBAPIError, match="append-only"), filled.begin() as conn:
        conn.execute(text("DELETE FROM audit_log"))
