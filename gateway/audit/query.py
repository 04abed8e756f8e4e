"""Auditor searches over the trail (FHIR R4 AuditEvent and Provenance search parameters).

Shared by the FHIR routes and the Bulk Data export: the HTTP layer parses the query string, this
module runs it. Token and reference parameters (`agent`, `entity`, `target`, `type`, `subtype`,
`address`, `model`) go through `audit_index`, whose key (param, value, recorded, seq)
serves "this agent, newest first, within these dates" as one index range; `patient` and `date`
use `audit_log`'s (patient_id, recorded) and (resource_type, recorded) indexes. Results are
newest first (`_sort=-date`), paged by a keyset cursor (recorded, seq).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Select, and_, or_, select

from gateway.audit.trail import AUDITED_TYPES, index_param
from gateway.domain.errors import InvalidInput
from gateway.persistence.tables import audit_index, audit_log

TOKEN_PARAMS = {
    "AuditEvent": ("agent", "entity", "type", "subtype", "address", "model"),
    "Provenance": ("agent", "entity", "target", "address"),
}
MAX_COUNT = 1000


@dataclass(frozen=True, slots=True)
class AuditQuery:
    """One search: the resource type, its parameters (ANDed), a page size and a cursor."""

    resource_type: str
    patient: str | None = None
    date_from: datetime | None = None  # inclusive (`date=ge...`)
    date_to: datetime | None = None  # exclusive (`date=lt...`)
    tokens: dict[str, str] = field(default_factory=dict)  # e.g. {"agent": "Practitioner/1"}
    count: int = 50
    before: tuple[datetime, int] | None = None  # keyset cursor: (recorded, seq) of the last hit


@dataclass(frozen=True, slots=True)
class AuditPage:
    """One page of hits, newest first, and the cursor of the next page (None at the end)."""

    resources: list[dict[str, Any]]
    next_cursor: tuple[datetime, int] | None


def search_records(conn: Connection, query: AuditQuery) -> AuditPage:
    """Run an auditor search; unknown parameters and bad values raise InvalidInput."""
    _check(query)
    statement = _statement(query).limit(query.count + 1)
    rows = conn.execute(statement).all()
    more = len(rows) > query.count
    rows = rows[: query.count]
    cursor = (rows[-1].recorded, int(rows[-1].seq)) if more and rows else None
    return AuditPage([json.loads(r.resource) for r in rows], cursor)


def _check(query: AuditQuery) -> None:
    if query.resource_type not in AUDITED_TYPES:
        raise InvalidInput(f"{query.resource_type} is not kept by the audit trail", code="value")
    unknown = set(query.tokens) - set(TOKEN_PARAMS[query.resource_type])
    if unknown:
        raise InvalidInput(
            f"unsupported search parameter(s) for {query.resource_type}: {sorted(unknown)}",
            code="not-supported",
        )
    if not 0 < query.count <= MAX_COUNT:
        raise InvalidInput(f"_count must be 1..{MAX_COUNT}", code="value")
    for moment in (query.date_from, query.date_to):
        if moment is not None and moment.tzinfo is None:
            raise InvalidInput("dates must carry a time zone", code="value")


def _statement(query: AuditQuery) -> Select[Any]:
    columns = (audit_log.c.seq, audit_log.c.recorded, audit_log.c.resource)
    tokens = sorted(query.tokens.items())
    if tokens:
        # Drive from the most selective-looking index entry: the first token, newest first.
        name, value = tokens[0]
        lead = audit_index.alias("lead")
        statement = (
            select(*columns)
            .select_from(lead.join(audit_log, audit_log.c.seq == lead.c.seq))
            .where(lead.c.param == index_param(query.resource_type, name), lead.c.value == value)
        )
        recorded = lead.c.recorded
        seq = lead.c.seq
        for name, value in tokens[1:]:
            other = audit_index.alias(f"t_{name}")
            statement = statement.where(
                select(other.c.seq)
                .where(
                    other.c.param == index_param(query.resource_type, name),
                    other.c.value == value,
                    other.c.recorded == lead.c.recorded,
                    other.c.seq == lead.c.seq,
                )
                .exists()
            )
    else:
        statement = select(*columns)
        recorded = audit_log.c.recorded
        seq = audit_log.c.seq
    statement = statement.where(audit_log.c.resource_type == query.resource_type)
    if query.patient is not None:
        statement = statement.where(audit_log.c.patient_id == query.patient)
    if query.date_from is not None:
        statement = statement.where(recorded >= query.date_from.astimezone(UTC))
    if query.date_to is not None:
        statement = statement.where(recorded < query.date_to.astimezone(UTC))
    if query.before is not None:
        at, before_seq = query.before
        statement = statement.where(or_(recorded < at, and_(recorded == at, seq < before_seq)))
    return statement.order_by(recorded.desc(), seq.desc())
