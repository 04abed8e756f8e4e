"""Someone with superuser rights drops the triggers and tampers; the verifier finds the spot."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from sqlalchemy import Connection, Engine, select, text

from gateway.audit import trail
from gateway.audit.verify import format_report, verify_chain
from gateway.persistence.tables import audit_head, audit_log
from gateway.persistence.triggers import drop_append_only_triggers, drop_retention_triggers
from tests.unit.audit.support import decision_event, provenance, scored_event

RECORDS = 7


@pytest.fixture
def chain(audit_engine: Engine) -> Engine:
    """Seven records, verified, with the append-only triggers then removed."""
    with audit_engine.begin() as conn:
        for i in range(RECORDS):
            if i % 3 == 2:
                trail.append_provenance(conn, provenance(f"t-{i}"), patient_id="pat-1")
            else:
                trail.record_event(conn, decision_event() if i % 2 else scored_event())
    report = verify_chain(audit_engine, batch_size=3)
    assert (report.ok, report.records, report.first_bad_seq) == (True, RECORDS, None)
    with audit_engine.begin() as conn:
        drop_retention_triggers(conn)
        drop_append_only_triggers(conn)
    return audit_engine


def _resource(conn: Connection, seq: int) -> dict[str, object]:
    text_ = conn.execute(select(audit_log.c.resource).where(audit_log.c.seq == seq)).scalar_one()
    document: dict[str, object] = json.loads(text_)
    return document


def _edit(conn: Connection) -> None:
    document = _resource(conn, 3)
    document["recorded"] = "2020-01-01T00:00:00Z"
    conn.execute(
        audit_log.update().where(audit_log.c.seq == 3).values(resource=json.dumps(document))
    )


def _edit_and_rehash(conn: Connection) -> None:
    row = conn.execute(select(audit_log).where(audit_log.c.seq == 3)).one()
    document = json.loads(row.resource)
    document["outcome"] = "12"
    new_text = json.dumps(document, sort_keys=True, separators=(",", ":"))
    conn.execute(
        audit_log.update()
        .where(audit_log.c.seq == 3)
        .values(resource=new_text, hash=trail.chain_hash(row.prev_hash, new_text))
    )


def _edit_index_column(conn: Connection) -> None:
    conn.execute(audit_log.update().where(audit_log.c.seq == 2).values(patient_id="pat-9"))


def _delete(conn: Connection) -> None:
    conn.execute(audit_log.delete().where(audit_log.c.seq == 4))


def _delete_first(conn: Connection) -> None:
    conn.execute(audit_log.delete().where(audit_log.c.seq == 1))


def _swap(conn: Connection) -> None:
    conn.execute(text("UPDATE audit_log SET seq = -1 WHERE seq = 3"))
    conn.execute(text("UPDATE audit_log SET seq = 3 WHERE seq = 4"))
    conn.execute(text("UPDATE audit_log SET seq = 4 WHERE seq = -1"))


def _forge_beyond_head(conn: Connection) -> None:
    last = conn.execute(select(audit_log).where(audit_log.c.seq == RECORDS)).one()
    forged = {**provenance("forged"), "id": "forged"}
    forged_text = json.dumps(forged, sort_keys=True, separators=(",", ":"))
    conn.execute(
        audit_log.insert().values(
            seq=RECORDS + 1,
            resource_type="Provenance",
            resource_id="forged",
            recorded=last.recorded,
            patient_id="",
            resource=forged_text,
            prev_hash=last.hash,
            hash=trail.chain_hash(last.hash, forged_text),
        )
    )


def _forge_in_the_middle(conn: Connection) -> None:
    # Shift the tail up by one (from the top, so the primary key never collides), then slip a
    # record into the gap that links correctly to its predecessor.
    for seq in range(RECORDS, 4, -1):
        conn.execute(audit_log.update().where(audit_log.c.seq == seq).values(seq=seq + 1))
    prev = conn.execute(select(audit_log).where(audit_log.c.seq == 4)).one()
    forged = {**_resource(conn, 4), "id": "forged"}
    forged_text = json.dumps(forged, sort_keys=True, separators=(",", ":"))
    conn.execute(
        audit_log.insert().values(
            seq=5,
            resource_type=prev.resource_type,
            resource_id="forged",
            recorded=prev.recorded,
            patient_id=prev.patient_id,
            resource=forged_text,
            prev_hash=prev.hash,
            hash=trail.chain_hash(prev.hash, forged_text),
        )
    )
    conn.execute(audit_head.update().values(seq=RECORDS + 1))


def _truncate_tail(conn: Connection) -> None:
    conn.execute(audit_log.delete().where(audit_log.c.seq >= 6))


def _truncate_tail_and_rewind_head(conn: Connection) -> None:
    last = conn.execute(select(audit_log).where(audit_log.c.seq == 5)).one()
    conn.execute(audit_log.delete().where(audit_log.c.seq >= 6))
    # The head now names record 5 but with a hash that is not record 5's.
    conn.execute(audit_head.update().values(seq=5, hash=last.prev_hash))


def _delete_head(conn: Connection) -> None:
    conn.execute(audit_head.delete())


TAMPERING: dict[str, tuple[Callable[[Connection], None], int, str]] = {
    "edit": (_edit, 3, "does not match its hash"),
    "edit-and-rehash": (_edit_and_rehash, 4, "does not link to record 3"),
    "edit-index-column": (_edit_index_column, 2, "patient column"),
    "delete": (_delete, 4, "record 4 is missing"),
    "delete-first": (_delete_first, 1, "record 1 is missing"),
    "reorder": (_swap, 3, "does not link to record 2"),
    "forge-beyond-head": (_forge_beyond_head, RECORDS + 1, "beyond the head"),
    "forge-in-the-middle": (_forge_in_the_middle, 6, "does not link to record 5"),
    "truncate-tail": (_truncate_tail, 6, "record 6 is missing"),
    "truncate-tail-rewind-head": (_truncate_tail_and_rewind_head, 5, "differs from the head"),
    "delete-head": (_delete_head, 1, "audit_head is missing"),
}


@pytest.mark.parametrize("name", TAMPERING)
def test_tampering_is_detected_and_located(chain: Engine, name: str) -> None:
    tamper, first_bad, reason = TAMPERING[name]
    with chain.begin() as conn:
        tamper(conn)
    report = verify_chain(chain, batch_size=3)
    assert not report.ok
    assert report.first_bad_seq == first_bad, report.reason
    assert reason in report.reason
    assert f"record {first_bad}" in format_report(report)


def test_report_of_a_sound_chain_names_the_head(chain: Engine) -> None:
    report = verify_chain(chain)
    with chain.connect() as conn:
        head_hash = conn.execute(select(audit_head.c.hash)).scalar_one()
    assert report.head_hash == head_hash
    assert format_report(report).startswith(f"audit chain OK: {RECORDS} records")


def test_empty_chain_verifies(audit_engine: Engine) -> None:
    report = verify_chain(audit_engine)
    assert (report.ok, report.records) == (True, 0)
