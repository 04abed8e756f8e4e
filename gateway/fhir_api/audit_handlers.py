"""Provenance and AuditEvent: read and search-type only; the trail is append-only, so PUT, PATCH
and DELETE are answered 405 (standards.md §2.4).

Search parameters follow FHIR R4 (provenance.html#search, auditevent.html#search): Provenance
`target`, `agent`, `entity`, `patient`, `recorded`; AuditEvent `agent`, `entity`, `patient`,
`date`, `type`, `subtype`, `action`, `outcome`.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement

from gateway.audit import trail
from gateway.audit.search_index import catch_up, search_audit
from gateway.domain.errors import NotFound
from gateway.fhir_api.access import check_compartment, compartment
from gateway.fhir_api.core import (
    FhirContext,
    FhirRequest,
    FhirResponse,
    SearchParam,
    version_headers,
)
from gateway.fhir_api.search import (
    any_of,
    check_params,
    date_clause,
    or_values,
    page,
    reference_id,
    reference_value,
    searchset,
)
from gateway.persistence.tables import audit_log

PROVENANCE_SEARCH_PARAMS: tuple[SearchParam, ...] = (
    SearchParam("_id", "token", "Logical id."),
    SearchParam("target", "reference", "Provenance.target (version-specific or not)."),
    SearchParam("agent", "reference", "Provenance.agent.who, e.g. Device/<model>."),
    SearchParam("entity", "reference", "Provenance.entity.what."),
    SearchParam("patient", "reference", "The patient the target belongs to."),
    SearchParam("recorded", "date", "Provenance.recorded."),
)
AUDIT_EVENT_SEARCH_PARAMS: tuple[SearchParam, ...] = (
    SearchParam("_id", "token", "Logical id."),
    SearchParam("agent", "reference", "AuditEvent.agent.who."),
    SearchParam("entity", "reference", "AuditEvent.entity.what."),
    SearchParam("patient", "reference", "The patient entity (object-role 1)."),
    SearchParam("date", "date", "AuditEvent.recorded."),
    SearchParam("type", "token", "AuditEvent.type."),
    SearchParam("subtype", "token", "AuditEvent.subtype."),
    SearchParam("action", "token", "AuditEvent.action (C R U D E)."),
    SearchParam("outcome", "token", "AuditEvent.outcome (0 4 8 12)."),
)
_REFERENCE_PARAMS = frozenset({"target", "agent", "entity"})
_TOKEN_PARAMS = frozenset({"_id", "type", "subtype", "action", "outcome"})


def _read(ctx: FhirContext, request: FhirRequest, resource_type: str) -> FhirResponse:
    allowed = compartment(request.principal, resource_type, "r")
    with ctx.engine.connect() as conn:
        found = trail.read(conn, resource_type, request.params["id"])
        patient = _patient_column(conn, resource_type, request.params["id"])
    if found is None:
        raise NotFound(f"{resource_type}/{request.params['id']} is not known")
    check_compartment(allowed, patient, f"{resource_type}/{request.params['id']}")
    return FhirResponse(
        found,
        headers=version_headers(found),
        touched=(f"{resource_type}/{found['id']}",),
        patients=(patient,) if patient else (),
    )


def _patient_column(conn: Any, resource_type: str, resource_id: str) -> str:
    from sqlalchemy import select

    value = conn.execute(
        select(audit_log.c.patient_id).where(
            audit_log.c.resource_type == resource_type, audit_log.c.resource_id == resource_id
        )
    ).scalar_one_or_none()
    return str(value or "")


def _search(
    ctx: FhirContext,
    request: FhirRequest,
    resource_type: str,
    params: tuple[SearchParam, ...],
    date_param: str,
) -> FhirResponse:
    check_params(request, params)
    allowed = compartment(request.principal, resource_type, "s")
    indexed: list[tuple[str, list[str]]] = []
    where: list[ColumnElement[bool]] = []
    for name in _REFERENCE_PARAMS | _TOKEN_PARAMS:
        for alternatives in or_values(request, name):
            if name in _REFERENCE_PARAMS:
                alternatives = [_reference(v) for v in alternatives]
            indexed.append((name, alternatives))
    for alternatives in or_values(request, "patient"):
        where.append(audit_log.c.patient_id.in_([reference_id(v, "Patient") for v in alternatives]))
    for alternatives in or_values(request, date_param):
        where.append(any_of(date_clause(audit_log.c.recorded, v) for v in alternatives))
    if allowed is not None:
        where.append(audit_log.c.patient_id == allowed)
    paging = page(request)
    catch_up(ctx.engine)
    with ctx.engine.connect() as conn:
        found, total = search_audit(
            conn, resource_type, indexed=indexed, where=where, count=paging.count,
            offset=paging.offset,
        )  # fmt: skip
    return FhirResponse(
        searchset(request, resource_type, found, total, paging),
        touched=tuple(f"{resource_type}/{r['id']}" for r in found),
    )


def _reference(value: str) -> str:
    # Keep version-specific references as given: the index holds both forms.
    if "/_history/" in value:
        parts = value.rstrip("/").split("/")
        return "/".join(parts[-4:])
    return reference_value(value, "")


def read_provenance(ctx: FhirContext, request: FhirRequest) -> FhirResponse:
    """`read` of a Provenance."""
    return _read(ctx, request, "Provenance")


def search_provenance(ctx: FhirContext, request: FhirRequest) -> FhirResponse:
    """`search-type` on Provenance."""
    return _search(ctx, request, "Provenance", PROVENANCE_SEARCH_PARAMS, "recorded")


def read_audit_event(ctx: FhirContext, request: FhirRequest) -> FhirResponse:
    """`read` of an AuditEvent."""
    return _read(ctx, request, "AuditEvent")


def search_audit_event(ctx: FhirContext, request: FhirRequest) -> FhirResponse:
    """`search-type` on AuditEvent."""
    return _search(ctx, request, "AuditEvent", AUDIT_EVENT_SEARCH_PARAMS, "date")
