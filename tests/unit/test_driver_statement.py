"""Hot statements on the driver's cursor write and read exactly what SQLAlchemy would.

Runs on SQLite and on PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import Engine, bindparam, insert, select, update

from gateway.persistence.db import make_engine
from gateway.persistence.driver_statement import DriverStatement
from gateway.persistence.tables import instances, metadata, studies

INSERT = DriverStatement(insert(instances))
BY_UID = select(instances).where(instances.c.sop_instance_uid == bindparam("uid"))


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    """The gateway's tables."""
    engine = make_engine(database_url)
    metadata.create_all(engine)
    try:
        yield engine
    finally:
        engine.dispose()


def _row(uid: str, **changes: Any) -> dict[str, Any]:
    row = {
        "sop_instance_uid": uid,
        "version": 1,
        "sop_class_uid": "1.2.840.10008.5.1.4.1.1.2",
        "study_instance_uid": "1.2.3",
        "series_instance_uid": "1.2.3.4",
        "transfer_syntax_uid": "1.2.840.10008.1.2.1",
        "modality": "CT",
        "path": "/spool/1.2.3/x.dcm",
        "size": 5 * 2**30,  # beyond 32 bits
        "sha256": "ab" * 32,
        "calling_ae": "MODALITY",
        # Not UTC and with microseconds: stored as UTC, read back aware.
        "received_at": datetime(2026, 3, 1, 12, 30, 5, 123456, tzinfo=timezone(timedelta(hours=2))),
        "transfer_id": None,
        "transfer_audited": False,
    }
    return {**row, **changes}


def _read(engine: Engine, uid: str) -> dict[str, Any]:
    with engine.connect() as conn:
        found = dict(conn.execute(BY_UID, {"uid": uid}).mappings().one())
    found.pop("id")
    found.pop("sop_instance_uid")
    return found


@pytest.mark.parametrize(
    "changes",
    [{}, {"transfer_id": "host:1:abc", "transfer_audited": True}, {"modality": "", "size": 0}],
)
def test_an_insert_stores_what_sqlalchemy_stores(engine: Engine, changes: dict[str, Any]) -> None:
    with engine.begin() as conn:
        INSERT.execute(conn, _row("1.1", **changes))
        conn.execute(insert(instances), _row("1.2", **changes))
    driver, orm = _read(engine, "1.1"), _read(engine, "1.2")
    assert driver == orm
    assert driver["received_at"] == datetime(2026, 3, 1, 10, 30, 5, 123456, tzinfo=UTC)


def test_rows_are_converted_as_sqlalchemy_converts_them(engine: Engine) -> None:
    with engine.begin() as conn:
        INSERT.execute(conn, _row("2.1"))
        INSERT.execute(conn, _row("2.1", version=2, transfer_id="t"))
    query = DriverStatement(BY_UID.order_by(instances.c.version))
    with engine.connect() as conn:
        driver = query.rows(conn, {"uid": "2.1"})
        orm = [tuple(r) for r in conn.execute(BY_UID.order_by(instances.c.version), {"uid": "2.1"})]
        none = query.rows(conn, {"uid": "nothing"})
    assert driver == orm
    assert driver[0][instances.c.keys().index("received_at")].tzinfo == UTC
    assert none == []


def test_constants_of_the_statement_travel_with_it(engine: Engine) -> None:
    now = datetime.now(UTC)
    study = {
        "study_instance_uid": "3.1",
        "state": "receiving",
        "instance_count": 1,
        "first_received_at": now,
        "last_received_at": now,
        "stable_due_at": now,
        "updated_at": now,
    }
    scored = DriverStatement(
        update(studies)
        .where(studies.c.study_instance_uid == bindparam("uid"))
        .values(state="scored", instance_count=studies.c.instance_count + 41)
    )
    with engine.begin() as conn:
        conn.execute(insert(studies), study)
        scored.execute(conn, {"uid": "3.1"})
    with engine.connect() as conn:
        row = conn.execute(select(studies.c.state, studies.c.instance_count)).one()
    assert tuple(row) == ("scored", 42)


def test_the_statements_run_in_the_callers_transaction(engine: Engine) -> None:
    with engine.connect() as conn:
        transaction = conn.begin()
        INSERT.execute(conn, _row("4.1"))
        transaction.rollback()
    with engine.connect() as conn:
        assert conn.execute(BY_UID, {"uid": "4.1"}).first() is None


def test_a_parameter_the_statement_does_not_take_is_refused(engine: Engine) -> None:
    with engine.begin() as conn, pytest.raises(ValueError, match="not in the statement"):
        DriverStatement(update(studies).values(state="x")).execute(conn, {"uid": "x"})
