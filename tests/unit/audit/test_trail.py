"""Appending, reading and searching the audit trail, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, select

from fhir_mapping.audit_event import audit_event_for
from fhir_mapping.canonical import canonical_json, sha256_hex
from gateway.audit import trail
from gateway.audit.verify import verify_chain
from gateway.persistence.tables import audit_head, audit_log
from tests.unit.audit.support import decision_event, provenance, scored_event


def test_appends_chain_from_genesis(audit_engine: Engine) -> None:
    with audit_engine.begin() as conn:
        first = trail.record_event(conn, decision_event())
        second = trail.append_provenance(conn, provenance(), patient_id="pat-1")
    assert (first.seq, second.seq) == (1, 2)
    with audit_engine.connect() as conn:
        rows = conn.execute(select(audit_log).order_by(audit_log.c.seq)).all()
        head = conn.execute(select(audit_head)).one()
    assert rows[0].prev_hash == trail.GENESIS_HASH
    assert rows[0].hash == sha256_hex(trail.GENESIS_HASH + rows[0].resource)
    assert rows[1].prev_hash == rows[0].hash
    assert rows[1].hash == second.hash == sha256_hex(rows[0].hash + rows[1].resource)
    assert (head.seq, head.hash) == (2, second.hash)
    assert rows[1].resource == canonical_json(json.loads(rows[1].resource))


def test_append_stamps_id_and_meta_and_read_returns_it(audit_engine: Engine) -> None:
    with audit_engine.begin() as conn:
        appended = trail.append_provenance(conn, provenance(), patient_id="pat-1")
    assert appended.reference == f"Provenance/{appended.resource_id}"
    with audit_engine.connect() as conn:
        stored = trail.read(conn, "Provenance", appended.resource_id)
        assert trail.read(conn, "Provenance", "absent") is None
    assert stored is not None
    assert stored["id"] == appended.resource_id
    assert stored["meta"]["versionId"] == "1"
    assert datetime.fromisoformat(stored["meta"]["lastUpdated"]).tzinfo is not None


def test_search_by_patient_and_since(audit_engine: Engine) -> None:
    with audit_engine.begin() as conn:
        trail.record_event(conn, decision_event(patient_id="pat-1"))
        trail.record_event(conn, decision_event(patient_id="pat-2"))
        trail.record_event(conn, scored_event(patient_id="pat-1"))
    with audit_engine.connect() as conn:
        assert len(trail.search(conn, "AuditEvent")) == 3
        assert len(trail.search(conn, "AuditEvent", patient="pat-1")) == 2
        recent = trail.search(conn, "AuditEvent", since=datetime.now(UTC) - timedelta(hours=1))
        assert [r["entity"][0]["what"]["reference"] for r in recent] == ["Patient/pat-1"]
        assert len(trail.search(conn, "AuditEvent", limit=1)) == 1
        assert trail.search(conn, "Provenance") == []


def test_rolled_back_transaction_leaves_no_record(audit_engine: Engine) -> None:
    with audit_engine.connect() as conn:
        transaction = conn.begin()
        trail.record_event(conn, decision_event())
        transaction.rollback()  # the state change it described failed
    with audit_engine.connect() as conn:
        assert conn.execute(select(audit_head.c.seq)).scalar_one() == 0
    assert verify_chain(audit_engine).ok


def test_failed_append_does_not_advance_the_head(audit_engine: Engine) -> None:
    with audit_engine.begin() as conn:
        kept = trail.append_provenance(conn, provenance())
        with pytest.raises(Exception, match=r"(?i)unique|duplicate"):
            trail.append_provenance(conn, {**provenance(), "id": kept.resource_id})
        trail.record_event(conn, decision_event())
    report = verify_chain(audit_engine)
    assert (report.ok, report.records) == (True, 2)


def test_invalid_resources_are_refused_before_the_lock(audit_engine: Engine) -> None:
    with audit_engine.begin() as conn:
        with pytest.raises(trail.AuditTrailError):
            trail.append(conn, "Task", {"resourceType": "Task"})
        with pytest.raises(ValueError, match="validation"):
            trail.append_provenance(conn, {"resourceType": "Provenance", "recorded": "x"})
        with pytest.raises(trail.AuditTrailError, match="patient"):
            trail.append(conn, "AuditEvent", _audit_event(), patient_id="someone-else")
        assert conn.execute(select(audit_head.c.seq)).scalar_one() == 0


def test_ensure_head_is_idempotent(audit_engine: Engine) -> None:
    with audit_engine.begin() as conn:
        trail.ensure_head(conn)
        trail.record_event(conn, decision_event())
        trail.ensure_head(conn)
        assert conn.execute(select(audit_head.c.seq)).scalar_one() == 1


def _audit_event() -> dict[str, Any]:
    return audit_event_for(decision_event(), record_id="ae-9", observer="hitl-gateway")
