"""Appending many records under one head lock: bulk imports, replays and the benchmark.

Same chain as `gateway.audit.trail.append` (see its module docstring), but the head is locked
once (`UPDATE ... SET seq = seq RETURNING`), the records are inserted with one multi-row
statement, and the head then advances over all of them; the database trigger lets the head jump
forward only over records that exist.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
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
    index_entries,
    index_param,
    prepare,
)
from gateway.persistence.tables import audit_head, audit_index, audit_log


@dataclass(frozen=True, slots=True)
class StagedRecord:
    """A record ready to chain: everything but its `seq` and hashes."""

    resource_type: str
    resource_id: str
    text: str  # canonical JSON, as it will be hashed and stored
    patient_id: str
    recorded: datetime
    index: tuple[tuple[str, str], ...]


def stage(
    items: Sequence[tuple[str, dict[str, Any], str]],
    *,
    validate: bool = True,
) -> list[StagedRecord]:
    """The CPU-heavy part (validation, canonical JSON, index values), done before any lock.

    `meta.lastUpdated` is the staging time, so a bulk loader can stage the next batch while the
    previous one is written.
    """
    stamp = _instant()
    staged = []
    for resource_type, resource, patient in items:
        document, patient_id, recorded = prepare(
            resource_type, resource, patient, validate=validate
        )
        document["meta"]["lastUpdated"] = stamp
        staged.append(
            StagedRecord(
                resource_type,
                document["id"],
                canonical_json(document),
                patient_id,
                recorded,
                tuple(index_entries(resource_type, document)),
            )
        )
    return staged


def append_staged(conn: Connection, staged: Sequence[StagedRecord]) -> list[AppendedRecord]:
    """Chain staged records in order under one head lock, in the caller's transaction."""
    if not staged:
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
        rows: list[dict[str, Any]] = []
        entries: list[dict[str, Any]] = []
        appended: list[AppendedRecord] = []
        for record in staged:
            seq += 1
            digest = chain_hash(prev_hash, record.text)
            rows.append(
                {
                    "seq": seq,
                    "resource_type": record.resource_type,
                    "resource_id": record.resource_id,
                    "recorded": record.recorded,
                    "patient_id": record.patient_id,
                    "resource": record.text,
                    "prev_hash": prev_hash,
                    "hash": digest,
                }
            )
            entries += [
                {
                    "param": index_param(record.resource_type, name),
                    "value": value,
                    "recorded": record.recorded,
                    "seq": seq,
                }
                for name, value in record.index
            ]
            appended.append(AppendedRecord(seq, digest, record.resource_type, record.resource_id))
            prev_hash = digest
        _insert(conn, audit_log, rows)
        if entries:
            _insert(conn, audit_index, entries)
        conn.execute(
            update(audit_head).where(audit_head.c.id == HEAD_ID).values(seq=seq, hash=prev_hash)
        )
    return appended


def append_batch(
    conn: Connection,
    items: Sequence[tuple[str, dict[str, Any], str]],
    *,
    validate: bool = True,
) -> list[AppendedRecord]:
    """Chain (resource type, resource, patient id) items in order, in the caller's transaction."""
    return append_staged(conn, stage(items, validate=validate))


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
