"""Subscription (R4 backport): create, read, search-type, delete (turns it off) and `$status`.

A caller sees only the subscriptions it created (admins see all); notifications carry ids only.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from fhir_mapping.subscriptions import status_parameters
from gateway import subscriptions as store
from gateway.domain.errors import InvalidInput, NotFound
from gateway.fhir_api.core import FhirContext, FhirRequest, FhirResponse, SearchParam
from gateway.fhir_api.search import check_params, or_values, page, searchset
from gateway.persistence.tables import subscriptions

SUBSCRIPTION_SEARCH_PARAMS = (
    SearchParam("_id", "token", "Logical id."),
    SearchParam("status", "token", "requested | active | error | off."),
)


def _caller(request: FhirRequest) -> str:
    if request.principal is None:
        raise InvalidInput("subscriptions need an authenticated caller")
    return request.principal.actor.reference


def _owned(request: FhirRequest, row: Any) -> Any:
    principal = request.principal
    if (
        principal is not None
        and "admin" not in principal.roles
        and row.created_by != _caller(request)
    ):
        raise NotFound(f"Subscription/{row.id} is not known")
    return row


def create_subscription(ctx: FhirContext, request: FhirRequest) -> FhirResponse:
    """`create`: validated against the backport profile; status `requested` until the handshake."""
    with ctx.engine.begin() as conn:
        resource = store.create(conn, request.body, _caller(request), ctx.clock())
    location = f"{request.base}/Subscription/{resource['id']}"
    return FhirResponse(resource, status=201, headers={"Location": location},
                        touched=(f"Subscription/{resource['id']}",))  # fmt: skip


def read_subscription(ctx: FhirContext, request: FhirRequest) -> FhirResponse:
    """`read`."""
    with ctx.engine.connect() as conn:
        row = _owned(request, store.read(conn, request.params["id"]))
    return FhirResponse(store.resource_of(row), touched=(f"Subscription/{row.id}",))


def search_subscription(ctx: FhirContext, request: FhirRequest) -> FhirResponse:
    """`search-type`: the caller's subscriptions."""
    check_params(request, SUBSCRIPTION_SEARCH_PARAMS)
    query = select(subscriptions).order_by(subscriptions.c.created_at.desc())
    for alternatives in or_values(request, "_id"):
        query = query.where(subscriptions.c.id.in_(alternatives))
    for alternatives in or_values(request, "status"):
        query = query.where(subscriptions.c.status.in_(alternatives))
    if request.principal is not None and "admin" not in request.principal.roles:
        query = query.where(subscriptions.c.created_by == _caller(request))
    with ctx.engine.connect() as conn:
        found = [store.resource_of(row) for row in conn.execute(query)]
    paging = page(request)
    chunk = found[paging.offset : paging.offset + paging.count]
    return FhirResponse(searchset(request, "Subscription", chunk, len(found), paging))


def delete_subscription(ctx: FhirContext, request: FhirRequest) -> FhirResponse:
    """`delete`: the subscription is turned `off` (kept, audited); 204."""
    with ctx.engine.begin() as conn:
        row = _owned(request, store.read(conn, request.params["id"]))
        actor = request.principal.actor if request.principal else store.GATEWAY
        store.set_status(conn, row.id, "off", ctx.clock(), actor)
    return FhirResponse(None, status=204, touched=(f"Subscription/{row.id}",))


def status_subscription(ctx: FhirContext, request: FhirRequest) -> FhirResponse:
    """`$status`: a backport-subscription-status-r4 Parameters of type `query-status`."""
    with ctx.engine.connect() as conn:
        row = _owned(request, store.read(conn, request.params["id"]))
    parameters = status_parameters(
        base=request.base, subscription_id=row.id, status=row.status, kind="query-status",
        events_since_start=int(row.events_since_start), error=row.error,
    )  # fmt: skip
    return FhirResponse(parameters, touched=(f"Subscription/{row.id}",))
