"""Batch appends: one head lock, the same chain, and a head that never skips a record."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError

from fhir_mapping.audit_event import audit_event_for
from gateway.audit import trail
from gateway.audit.batch import append_batch
from gateway.audit.query import AuditQuery, search_records
from gateway.audit.verify import verify_chain
from tests.unit.audit.support import decision_event, provenance


def test_a_batch_chains_like_single_appends_and_is_indexed(audit_engine: Engine) -> None:
    with audit_engine.begin() as conn:
        trail.record_event(conn, decision_event())
        items = [
            (
                "AuditEvent",
                audit_event_for(decision_event(f"p{i}"), record_id=f"a{i}", observer="gw"),
                "",
            )
            for i in range(5)
        ] + [("Provenance", provenance("t-9"), "p9")]
        appended = append_batch(conn, items, validate=False)
        trail.record_event(conn, decision_event())
    assert [a.seq for a in appended] == [2, 3, 4, 5, 6, 7]
    report = verify_chain(audit_engine, batch_size=4)
    assert report.ok, report.reason
    assert report.head_seq == 8
    with audit_engine.connect() as conn:
        found = search_records(conn, AuditQuery("AuditEvent", patient="p3")).resources
        prov = search_records(conn, AuditQuery("Provenance", patient="p9")).resources
    assert [r["id"] for r in found] == ["a3"]
    assert len(prov) == 1


def test_an_invalid_item_leaves_nothing_behind(audit_engine: Engine) -> None:
    with audit_engine.begin() as conn:
        with pytest.raises(ValueError, match="target"):
            append_batch(conn, [("Provenance", {"resourceType": "Provenance"}, "")])
        assert append_batch(conn, []) == []
    assert verify_chain(audit_engine).head_seq == 0


def test_the_head_cannot_skip_records(audit_engine: Engine) -> None:
    with audit_engine.begin() as conn:
        trail.record_event(conn, decision_event())
    with pytest.raises(DBAPIError, match="append-only"), audit_engine.begin() as conn:
        conn.execute(text("UPDATE audit_head SET seq = 3"))
