"""Appending many records under one head lock: bulk imports, replays and the benchmark.

Same chain as `gateway.audit.trail.append` (see its module docstring), but the head is locked
once (`UPDATE ... SET seq = seq RETURNING`), the records are inserted with one multi-row
statement, and the head then advances over all of them; the database trigger lets the head jump
forward only over records that exist.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Table, insert, update

from fhir_mapping.canonical import canonical_json
from gateway.audit.trail import (
    HEAD_ID,
    AppendedRecord,
    AuditTrailError,
    _instant,
    chain_hash,
    index_rows,
    prepare,
)
from gateway.persistence.tables import audit_head, audit_index, audit_log


def append_batch(
    conn: Connection,
    items: Sequence[tuple[str, dict[str, Any], str]],
    *,
    validate: bool = True,
) -> list[AppendedRecord]:
    """Chain (resource type, resource, patient id) items in order, in the caller's transaction."""
    prepared = [(*prepare(t, r, p, validate=validate), t) for t, r, p in items]
    if not prepared:
        return []
    with conn.begin_nested():
        head = conn.execute(
            update(audit_head)
            .where(audit_head.c.id == HEAD_ID)
            .values(seq=audit_head.c.seq)
            .returning(audit_head.c.seq, audit_head.c.hash)
        ).one_or_none()
        if head is None:
            raise AuditTrailError("audit_head is missing: run the migration or ensure_head()")
        seq, prev_hash = int(head.seq), str(head.hash)
        stamp = _instant()  # under the lock, so lastUpdated follows seq order across batches
        rows: list[dict[str, Any]] = []
        entries: list[dict[str, Any]] = []
        appended: list[AppendedRecord] = []
        for document, patient_id, recorded, resource_type in prepared:
            seq += 1
            document["meta"]["lastUpdated"] = stamp
            text = canonical_json(document)
            digest = chain_hash(prev_hash, text)
            rows.append(
                {
                    "seq": seq,
                    "resource_type": resource_type,
                    "resource_id": document["id"],
                    "recorded": recorded,
                    "patient_id": patient_id,
                    "resource": text,
                    "prev_hash": prev_hash,
                    "hash": digest,
                }
            )
            entries += index_rows(seq, resource_type, document, recorded)
            appended.append(AppendedRecord(seq, digest, resource_type, document["id"]))
            prev_hash = digest
        _insert(conn, audit_log, rows)
        if entries:
            _insert(conn, audit_index, entries)
        conn.execute(
            update(audit_head).where(audit_head.c.id == HEAD_ID).values(seq=seq, hash=prev_hash)
        )
    return appended


def _insert(conn: Connection, table: Table, rows: list[dict[str, Any]]) -> None:
    """Multi-row insert; PostgreSQL with psycopg uses COPY (an order of magnitude faster)."""
    driver = conn.connection.driver_connection
    if conn.dialect.name != "postgresql" or not hasattr(driver, "cursor"):
        conn.execute(insert(table), rows)
        return
    names = list(rows[0])
    lines = "".join("\t".join(_copy_text(row[n]) for n in names) + "\n" for row in rows)
    statement = f"COPY {table.name} ({', '.join(names)}) FROM STDIN"
    with driver.cursor() as cursor, cursor.copy(statement) as copy:  # type: ignore[union-attr]
        copy.write(lines)


def _copy_text(value: Any) -> str:
    """A value in COPY text format (PostgreSQL docs, COPY: backslash escapes)."""
    if isinstance(value, datetime):
        return value.isoformat()
    text = str(value)
    if "\\" in text or "\t" in text or "\n" in text or "\r" in text:
        text = text.replace("\\", "\\\\").replace("\t", "\\t")
        text = text.replace("\n", "\\n").replace("\r", "\\r")
    return text
