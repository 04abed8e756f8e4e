"""FHIR search over the audit trail (Provenance, AuditEvent): a derived index caught up on `seq`.

`audit_log` stays append-only and its append path unchanged: before a search, records with a
sequence number above the highest indexed one are read and their search values (references,
tokens) written to `audit_search_index`. The index can be dropped and rebuilt from the log at any
time. Dates and patients use the log's own indexed columns.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from sqlalchemy import ColumnElement, Connection, Engine, and_, func, insert, select
from sqlalchemy.dialects import postgresql, sqlite

from gateway.persistence.tables import audit_log, audit_search_index

BATCH = 2000
MAX_VALUE = 255


def _versionless(reference: str) -> str:
    return reference.split("/_history/", 1)[0]


def _refs(name: str, reference: Any) -> Iterator[tuple[str, str]]:
    if isinstance(reference, str) and reference:
        yield name, reference
        if "/_history/" in reference:
            yield name, _versionless(reference)


def _token(name: str, coding: Any) -> Iterator[tuple[str, str]]:
    if isinstance(coding, Mapping) and coding.get("code"):
        yield name, str(coding["code"])
        if coding.get("system"):
            yield name, f"{coding['system']}|{coding['code']}"


def index_values(resource_type: str, resource: Mapping[str, Any]) -> set[tuple[str, str]]:
    """The (parameter, value) pairs a stored Provenance or AuditEvent is found by."""
    values: set[tuple[str, str]] = {("_id", str(resource.get("id", "")))}
    for agent in resource.get("agent", []):
        values.update(_refs("agent", agent.get("who", {}).get("reference")))
    for entity in resource.get("entity", []):
        values.update(_refs("entity", entity.get("what", {}).get("reference")))
    if resource_type == "Provenance":
        for target in resource.get("target", []):
            values.update(_refs("target", target.get("reference")))
    if resource_type == "AuditEvent":
        values.update(_token("type", resource.get("type")))
        for subtype in resource.get("subtype", []):
            values.update(_token("subtype", subtype))
        for key in ("action", "outcome"):
            if resource.get(key):
                values.add((key, str(resource[key])))
    return {(n, v[:MAX_VALUE]) for n, v in values if v}


def catch_up(engine: Engine) -> int:
    """Index the records appended since the last catch-up; returns how many were indexed."""
    done = 0
    while True:
        with engine.begin() as conn:
            last = conn.execute(select(func.max(audit_search_index.c.seq))).scalar() or 0
            rows = conn.execute(
                select(audit_log.c.seq, audit_log.c.resource_type, audit_log.c.resource)
                .where(audit_log.c.seq > last)
                .order_by(audit_log.c.seq)
                .limit(BATCH)
            ).all()
            if not rows:
                return done
            pairs = [
                {"seq": row.seq, "name": name, "value": value}
                for row in rows
                for name, value in sorted(index_values(row.resource_type, json.loads(row.resource)))
            ]
            _insert_ignoring_duplicates(conn, pairs)
            done += len(rows)


def _insert_ignoring_duplicates(conn: Connection, pairs: list[dict[str, Any]]) -> None:
    # Two searchers may catch up at once; the primary key makes the second insert a no-op.
    if conn.dialect.name == "postgresql":
        conn.execute(postgresql.insert(audit_search_index).on_conflict_do_nothing(), pairs)
    elif conn.dialect.name == "sqlite":
        conn.execute(sqlite.insert(audit_search_index).on_conflict_do_nothing(), pairs)
    else:
        conn.execute(insert(audit_search_index), pairs)


def search_audit(
    conn: Connection,
    resource_type: str,
    *,
    indexed: Sequence[tuple[str, Sequence[str]]],
    where: Sequence[ColumnElement[bool]] = (),
    count: int,
    offset: int,
    newest_first: bool = True,
) -> tuple[list[dict[str, Any]], int]:
    """(page of resources, total) matching every indexed (name, any-of values) and `where`."""
    conditions: list[ColumnElement[bool]] = [audit_log.c.resource_type == resource_type, *where]
    for name, values in indexed:
        alias = audit_search_index.alias()
        conditions.append(
            audit_log.c.seq.in_(
                select(alias.c.seq).where(
                    and_(alias.c.name == name, alias.c.value.in_(list(values)))
                )
            )
        )
    total = conn.execute(
        select(func.count()).select_from(audit_log).where(*conditions)
    ).scalar_one()
    order = audit_log.c.seq.desc() if newest_first else audit_log.c.seq.asc()
    rows = conn.execute(
        select(audit_log.c.resource).where(*conditions).order_by(order).limit(count).offset(offset)
    ).scalars()
    return [json.loads(text) for text in rows], int(total)
