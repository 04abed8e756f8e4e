"""Appending many records under one head lock: bulk imports, replays and the benchmark.

Same chain as `gateway.audit.trail.append` (see its module docstring), but the head is locked
once (`UPDATE ... SET seq = seq RETURNING`), the records are inserted with one multi-row
statement, and the head then advances over all of them; the database trigger lets the head jump
forward only over records that exist.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, insert, update

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
        conn.execute(insert(audit_log), rows)
        if entries:
            conn.execute(insert(audit_index), entries)
        conn.execute(
            update(audit_head).where(audit_head.c.id == HEAD_ID).values(seq=seq, hash=prev_hash)
        )
    return appended
