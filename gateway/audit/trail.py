"""Append-only, hash-chained audit trail of AuditEvent and Provenance resources.

Chain definition (what `gateway.audit.verify` recomputes):

- Records are numbered `seq` = 1, 2, 3, ... without gaps, in commit order.
- `text_n` is the stored resource: `fhir_mapping.canonical.canonical_json` of the resource after
  `id`, `meta.versionId` and `meta.lastUpdated` are stamped (keys sorted, separators `,` and `:`,
  no other white space, non-ASCII kept as UTF-8).
- `prev_hash_1` is `GENESIS_HASH` (64 zeros); `prev_hash_n` = `hash_{n-1}`.
- `hash_n = lower-case hex SHA-256 of the UTF-8 bytes of (prev_hash_n + text_n)`, the two strings
  simply concatenated (the previous hash is always 64 hex characters, so the split is unambiguous).
- `audit_head` holds the last `seq` and `hash`, so a truncated tail is detected too.
- Signed checkpoints (`gateway.audit.checkpoint`) sign the hash at a `seq`; `audit_index` keeps
  the search parameters of each record (`index_entries`) in the same transaction.

Appending starts with `UPDATE audit_head SET seq = seq + 1 ... RETURNING seq, hash`: the row lock
(PostgreSQL) or the database write lock (SQLite) serialises appenders until commit, so the chain
has no forks. Appends run in the caller's transaction: a state change and its audit record commit
together or not at all.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, func, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite

from fhir_mapping import r4
from fhir_mapping.audit_event import audit_event_for
from fhir_mapping.canonical import canonical_json, sha256_hex
from gateway.persistence.tables import audit_head, audit_index, audit_log
from gateway.pipeline import PipelineEvent

GENESIS_HASH = "0" * 64
HEAD_ID = 1
AUDITED_TYPES = frozenset({"AuditEvent", "Provenance"})
GATEWAY_DEVICE = "Device/hitl-gateway"
# R4 Provenance has no patient element; the patient a record is about is kept in the hashed
# resource through this extension so the patient column can be verified like AuditEvent's.
PATIENT_EXTENSION = "http://hitl-gateway.org/fhir/StructureDefinition/audit-patient"


class AuditTrailError(RuntimeError):
    """The trail cannot accept a record (missing head, unsupported resource)."""


@dataclass(frozen=True, slots=True)
class AppendedRecord:
    """Where a resource landed in the chain."""

    seq: int
    hash: str
    resource_type: str = ""
    resource_id: str = ""

    @property
    def reference(self) -> str:
        """Literal reference to the stored resource, e.g. `Provenance/<id>`."""
        return f"{self.resource_type}/{self.resource_id}"


def chain_hash(prev_hash: str, text: str) -> str:
    """The hash of one record: SHA-256 over the previous hash followed by the record's text."""
    return sha256_hex(prev_hash + text)


def ensure_head(conn: Connection) -> None:
    """Create the chain head (seq 0, genesis hash) unless it exists; refuse if records exist."""
    if conn.execute(select(audit_head.c.id).where(audit_head.c.id == HEAD_ID)).first():
        return
    if conn.execute(select(func.count()).select_from(audit_log)).scalar_one():
        # A lost head over existing records means tampering; recreating it would hide a truncation.
        raise AuditTrailError("audit_head is missing while audit_log has records")
    values = {"id": HEAD_ID, "seq": 0, "hash": GENESIS_HASH}
    if conn.dialect.name == "postgresql":
        conn.execute(postgresql.insert(audit_head).values(values).on_conflict_do_nothing())
    elif conn.dialect.name == "sqlite":
        conn.execute(sqlite.insert(audit_head).values(values).on_conflict_do_nothing())
    else:
        conn.execute(insert(audit_head).values(values))


def prepare(
    resource_type: str,
    resource: dict[str, Any],
    patient_id: str = "",
    *,
    validate: bool = True,
) -> tuple[dict[str, Any], str, datetime]:
    """The resource as it will be chained (id, meta, patient), its patient id and `recorded`.

    `validate=False` is for resources an R4 mapper of this package has just validated.
    """
    if resource_type not in AUDITED_TYPES:
        raise AuditTrailError(
            f"the audit trail keeps AuditEvent and Provenance, not {resource_type}"
        )
    if resource.get("resourceType") != resource_type:
        raise AuditTrailError(f"resourceType {resource.get('resourceType')!r} != {resource_type}")
    document = dict(resource)
    if resource_type == "AuditEvent":
        # The patient column is an index the verifier re-derives; it must agree with the resource.
        named = audit_event_patient(resource)
        if patient_id and patient_id != named:
            raise AuditTrailError(f"patient {patient_id!r} is not the AuditEvent's patient entity")
        patient_id = named
    else:
        document = with_provenance_patient(document, patient_id)
        patient_id = provenance_patient(document)
    document.setdefault("id", str(uuid.uuid4()))
    document["meta"] = {**document.get("meta", {}), "versionId": "1", "lastUpdated": _instant()}
    if validate:
        document = r4.validated(document)  # before the lock: an invalid resource never holds it
    return document, patient_id, recorded_of(document)


def append(
    conn: Connection, resource_type: str, resource: dict[str, Any], patient_id: str = ""
) -> AppendedRecord:
    """Validate, stamp and chain one resource into the audit log (in the caller's transaction)."""
    document, patient_id, recorded = prepare(resource_type, resource, patient_id)
    # The savepoint undoes the head's advance if the insert fails, so a caller that catches the
    # error and commits its own work cannot leave a gap in the chain.
    with conn.begin_nested():
        head = conn.execute(
            update(audit_head)
            .where(audit_head.c.id == HEAD_ID)
            .values(seq=audit_head.c.seq + 1)
            .returning(audit_head.c.seq, audit_head.c.hash)
        ).one_or_none()
        if head is None:
            raise AuditTrailError("audit_head is missing: run the migration or ensure_head()")
        seq, prev_hash = int(head.seq), str(head.hash)
        # Stamped again under the lock so lastUpdated follows seq order.
        document["meta"]["lastUpdated"] = _instant()
        text = canonical_json(document)
        digest = chain_hash(prev_hash, text)
        conn.execute(
            insert(audit_log).values(
                seq=seq,
                resource_type=resource_type,
                resource_id=document["id"],
                recorded=recorded,
                patient_id=patient_id,
                resource=text,
                prev_hash=prev_hash,
                hash=digest,
            )
        )
        conn.execute(update(audit_head).where(audit_head.c.id == HEAD_ID).values(hash=digest))
        entries = index_rows(seq, resource_type, document, recorded)
        if entries:
            conn.execute(insert(audit_index), entries)
    return AppendedRecord(seq, digest, resource_type, document["id"])


def index_rows(
    seq: int, resource_type: str, document: dict[str, Any], recorded: datetime
) -> list[dict[str, Any]]:
    """The `audit_index` rows of one chained record."""
    return [
        {"param": index_param(resource_type, p), "value": v, "recorded": recorded, "seq": seq}
        for p, v in index_entries(resource_type, document)
    ]


def index_param(resource_type: str, name: str) -> str:
    """The `audit_index.param` of a search parameter: `ae.agent`, `pv.target`, ..."""
    return f"{'ae' if resource_type == 'AuditEvent' else 'pv'}.{name}"


def index_entries(resource_type: str, document: dict[str, Any]) -> list[tuple[str, str]]:
    """The (search parameter, value) pairs `audit_index` keeps for one resource (R4 search)."""
    found: set[tuple[str, str]] = set()

    def reference(param: str, element: Any) -> None:
        value = str((element or {}).get("reference", ""))
        if value:
            found.add((param, value[:255]))
            if "/_history/" in value:  # a search on Task/x finds every version's record
                found.add((param, value.split("/_history/")[0][:255]))

    for agent in document.get("agent", ()):
        # The gateway's own Device is an agent of nearly every record: indexing it finds nothing.
        if agent.get("who", {}).get("reference") != GATEWAY_DEVICE:
            reference("agent", agent.get("who"))
        address = agent.get("network", {}).get("address")
        if address:
            found.add(("address", str(address)[:255]))
    for entity in document.get("entity", ()):
        # Patients are searched through the indexed patient column.
        if not str(entity.get("what", {}).get("reference", "")).startswith("Patient/"):
            reference("entity", entity.get("what"))
    if resource_type == "AuditEvent":
        found.add(("type", str(document.get("type", {}).get("code", ""))))
        for coding in document.get("subtype", ()):
            found.add(("subtype", str(coding.get("code", ""))))
        details = {
            str(d.get("type")): str(d.get("valueString", ""))
            for entity in document.get("entity", ())
            for d in entity.get("detail", ())
        }
        if details.get("audit-activity"):
            found.add(("activity", details["audit-activity"][:255]))
        # Governance records of a model version (registration, approvals, gate, promotion).
        governance = details.get("pipeline-event", "").startswith("model-")
        if governance and details.get("model-name") and details.get("model-version"):
            found.add(("model", f"{details['model-name']}:{details['model-version']}"[:255]))
    else:
        for target in document.get("target", ()):
            reference("target", target)
    return sorted(found)


def provenance_patient(provenance: dict[str, Any]) -> str:
    """The patient a Provenance is about, from the gateway's patient extension, or ""."""
    for extension in provenance.get("extension", ()):
        if extension.get("url") == PATIENT_EXTENSION:
            return str(extension.get("valueReference", {}).get("reference", "")).removeprefix(
                "Patient/"
            )
    return ""


def with_provenance_patient(provenance: dict[str, Any], patient_id: str) -> dict[str, Any]:
    """The Provenance naming its patient in the hashed resource, so the column can be verified."""
    named = provenance_patient(provenance)
    if named and patient_id and named != patient_id:
        raise AuditTrailError(f"patient {patient_id!r} is not the Provenance's patient")
    if named or not patient_id:
        return provenance
    extension = {"url": PATIENT_EXTENSION, "valueReference": {"reference": f"Patient/{patient_id}"}}
    return {**provenance, "extension": [*provenance.get("extension", ()), extension]}


def record_event(
    conn: Connection, event: PipelineEvent, observer: str = "hitl-gateway"
) -> AppendedRecord:
    """Append the AuditEvent for one pipeline event."""
    resource = audit_event_for(event, record_id=str(uuid.uuid4()), observer=observer)
    return append(conn, "AuditEvent", resource, event.patient_id)


def append_provenance(
    conn: Connection, provenance: dict[str, Any], patient_id: str = ""
) -> AppendedRecord:
    """Append a Provenance resource built elsewhere."""
    return append(conn, "Provenance", provenance, patient_id)


def read(conn: Connection, resource_type: str, id: str) -> dict[str, Any] | None:
    """The stored resource by type and id (FHIR `read`), or None."""
    text = conn.execute(
        select(audit_log.c.resource).where(
            audit_log.c.resource_type == resource_type, audit_log.c.resource_id == id
        )
    ).scalar_one_or_none()
    return None if text is None else _loads(text)


def search(
    conn: Connection,
    resource_type: str,
    *,
    patient: str | None = None,
    since: datetime | None = None,
    limit: int = 100,
) -> list[dict[str, Any]]:
    """Stored resources of a type, oldest first, filtered by patient id and `recorded >= since`."""
    query = select(audit_log.c.resource).where(audit_log.c.resource_type == resource_type)
    if patient is not None:
        query = query.where(audit_log.c.patient_id == patient)
    if since is not None:
        if since.tzinfo is None:
            raise ValueError("since must carry a time zone")
        # SQLite keeps timestamps without zone, so compare in the UTC they were stored in.
        query = query.where(audit_log.c.recorded >= since.astimezone(UTC))
    rows = conn.execute(query.order_by(audit_log.c.seq).limit(limit)).scalars()
    return [_loads(text) for text in rows]


def recorded_of(document: dict[str, Any]) -> datetime:
    """`recorded` of an AuditEvent or Provenance as an aware UTC datetime."""
    value = datetime.fromisoformat(str(document["recorded"]))
    if value.tzinfo is None:
        raise AuditTrailError("recorded must be an instant with a time zone")
    return value.astimezone(UTC)


def audit_event_patient(audit_event: dict[str, Any]) -> str:
    """The id of the AuditEvent's patient entity (object-role 1, `Patient/<id>`), or ""."""
    for entity in audit_event.get("entity", ()):
        reference = str(entity.get("what", {}).get("reference", ""))
        if entity.get("role", {}).get("code") == "1" and reference.startswith("Patient/"):
            return reference.removeprefix("Patient/")
    return ""


def _instant() -> str:
    # The form the R4 models emit for an instant, so stored and re-validated JSON agree.
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _loads(text: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(text)
    return document
