"""The audit trail: append-only, hash-chained AuditEvent and Provenance records."""

from gateway.audit.trail import (
    GENESIS_HASH,
    AppendedRecord,
    AuditTrailError,
    append,
    append_provenance,
    ensure_head,
    read,
    record_event,
    search,
)

__all__ = [
    "GENESIS_HASH",
    "AppendedRecord",
    "AuditTrailError",
    "append",
    "append_provenance",
    "ensure_head",
    "read",
    "record_event",
    "search",
]
