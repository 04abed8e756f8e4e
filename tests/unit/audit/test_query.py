"""Auditor searches: patient and date, agent, target, entity, type; paging; index use."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, text

from gateway.audit import trail
from gateway.audit.query import AuditQuery, _statement, search_records
from gateway.domain.errors import InvalidInput
from gateway.domain.model import Actor
from tests.unit.audit.support import decision_event, provenance, scored_event

T0 = datetime(2026, 5, 1, tzinfo=UTC)
OTHER = Actor(reference="Practitioner/dr-b", roles=("reviewer",), network_address="10.0.0.9")


@pytest.fixture
def seeded(audit_engine: Engine) -> Engine:
    """Twenty decisions over twenty days (p1 even days by dr-a, p2 odd by dr-b) + Provenance."""
    with audit_engine.begin() as conn:
        for day in range(20):
            when = T0 + timedelta(days=day)
            patient = "p1" if day % 2 == 0 else "p2"
            actor = {} if day % 2 == 0 else {"actor": OTHER}
            trail.record_event(
                conn,
                decision_event(
                    patient,
                    occurred_at=when,
                    entities=(f"Task/t-{day}/_history/2",),
                    **actor,
                ),
            )
            prov = {**provenance(f"t-{day}"), "recorded": when.isoformat()}
            trail.append_provenance(conn, prov, patient_id=patient)
        trail.record_event(conn, scored_event("p1"))
    return audit_engine


def _ids(engine: Engine, query: AuditQuery) -> list[str]:
    with engine.connect() as conn:
        return [
            r["entity"][-2]["what"]["reference"]
            if r["resourceType"] == "AuditEvent"
            else r["target"][0]["reference"]
            for r in search_records(conn, query).resources
        ]


def test_patient_and_date(seeded: Engine) -> None:
    query = AuditQuery(
        "AuditEvent",
        patient="p1",
        date_from=T0 + timedelta(days=4),
        date_to=T0 + timedelta(days=10),
    )
    assert _ids(seeded, query) == [
        "Task/t-8/_history/2",
        "Task/t-6/_history/2",
        "Task/t-4/_history/2",
    ]


def test_agent_target_entity_type_and_address(seeded: Engine) -> None:
    by_agent = AuditQuery("AuditEvent", tokens={"agent": "Practitioner/dr-b"}, count=100)
    assert len(_ids(seeded, by_agent)) == 10
    prov_agent = AuditQuery("Provenance", tokens={"agent": "Device/cxr-ptx-7"}, count=100)
    assert len(_ids(seeded, prov_agent)) == 20
    by_target = AuditQuery("Provenance", tokens={"target": "Task/t-3"})
    assert _ids(seeded, by_target) == ["Task/t-3/_history/1"]
    by_entity = AuditQuery("AuditEvent", tokens={"entity": "Task/t-5"})
    assert _ids(seeded, by_entity) == ["Task/t-5/_history/2"]
    both = AuditQuery(
        "AuditEvent",
        tokens={"agent": "Practitioner/dr-b", "subtype": "update", "address": "10.0.0.9"},
        date_from=T0 + timedelta(days=15),
    )
    assert _ids(seeded, both) == [
        "Task/t-19/_history/2",
        "Task/t-17/_history/2",
        "Task/t-15/_history/2",
    ]
    scored = AuditQuery("AuditEvent", tokens={"type": "110100"})
    with seeded.connect() as conn:
        assert len(search_records(conn, scored).resources) == 1


def test_paging_with_a_cursor_visits_every_hit_once(seeded: Engine) -> None:
    seen: list[str] = []
    cursor = None
    with seeded.connect() as conn:
        while True:
            page = search_records(conn, AuditQuery("Provenance", count=6, before=cursor))
            seen += [r["id"] for r in page.resources]
            cursor = page.next_cursor
            if cursor is None:
                break
    assert len(seen) == len(set(seen)) == 20


@pytest.mark.parametrize(
    "query",
    [
        AuditQuery("Task"),
        AuditQuery("AuditEvent", tokens={"target": "Task/1"}),
        AuditQuery("AuditEvent", count=0),
        AuditQuery("AuditEvent", date_from=datetime(2026, 1, 1)),
    ],
)
def test_bad_searches_are_refused(seeded: Engine, query: AuditQuery) -> None:
    with seeded.connect() as conn, pytest.raises(InvalidInput):
        search_records(conn, query)


def test_sqlite_plans_use_the_indexes(tmp_path_factory: pytest.TempPathFactory) -> None:
    from tests.unit.audit.conftest import _audit_engine

    url = f"sqlite:///{tmp_path_factory.mktemp('plan') / 'g.db'}"
    engine = next(_audit_engine(url))
    queries = [
        AuditQuery("AuditEvent", patient="p1", date_from=T0, date_to=T0 + timedelta(days=1)),
        AuditQuery("Provenance", tokens={"agent": "Practitioner/x"}, date_from=T0),
    ]
    with engine.connect() as conn:
        for query in queries:
            compiled = (
                _statement(query).limit(51).compile(conn, compile_kwargs={"literal_binds": True})
            )
            plan = " | ".join(
                str(row[-1]) for row in conn.execute(text(f"EXPLAIN QUERY PLAN {compiled}"))
            )
            assert "SCAN audit_log" not in plan, plan
            assert "INDEX" in plan or "PRIMARY KEY" in plan, plan
    engine.dispose()
