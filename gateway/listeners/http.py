"""The HTTP listener: an aiohttp app factory binding the FHIR route table, plus health and SMART
discovery.

The FHIR interactions live in `gateway.fhir_api` (transport-free); this module only authenticates
(RFC 6750 bearer tokens, SMART scopes per route), turns each request into a `FhirRequest`, runs the
handler in a worker thread (the database engine is synchronous), masks PHI for auditors without
PHI rights, notifies the interaction hooks, and maps every error once to an OperationOutcome.
Only metadata, health and discovery documents are public.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from sqlalchemy import Engine

from fhir_mapping.outcome import http_status_for, operation_outcome, outcome_for
from gateway.audit.trail import record_event
from gateway.auth.backend import BackendTokenService, OAuthError
from gateway.auth.smart import smart_configuration
from gateway.auth.tokens import (
    InsufficientScope,
    InvalidToken,
    MissingToken,
    Principal,
    TokenValidator,
    bearer_token,
    require_scope,
)
from gateway.domain.errors import (
    Forbidden,
    GatewayError,
    InvalidInput,
    NotAuthenticated,
    NotFound,
    OutOfResources,
)
from gateway.domain.model import Actor
from gateway.fhir_api.access import mask_phi, may_see_phi
from gateway.fhir_api.capability import capability_statement
from gateway.fhir_api.core import (
    FhirContext,
    FhirRequest,
    InteractionHooks,
    InteractionRecord,
    Route,
)
from gateway.fhir_api.routes import ROUTES
from gateway.pipeline import Event, PipelineEvent
from gateway.review_service import UNIDENTIFIED_CLIENT, ReviewService
from gateway.settings import Settings

log = logging.getLogger(__name__)

FHIR_JSON = "application/fhir+json"
FHIR_PREFIX = "/fhir"
REALM = "hitl-gateway"

Readiness = Callable[[], dict[str, Any]]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

SETTINGS = web.AppKey("settings", Settings)
ENGINE = web.AppKey("engine", Engine)
REVIEW = web.AppKey("review_service", ReviewService)
VALIDATOR = web.AppKey("token_validator", TokenValidator)
READINESS: web.AppKey[Readiness] = web.AppKey("readiness")
FHIR_CONTEXT = web.AppKey("fhir_context", FhirContext)
INTERACTION_HOOKS = web.AppKey("interaction_hooks", InteractionHooks)
BACKEND = web.AppKey("backend_token_service", BackendTokenService)
REQUEST_ID = web.RequestKey("request_id", str)


def fhir_response(
    document: dict[str, Any], status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    """A FHIR JSON response (`application/fhir+json`)."""
    return web.Response(
        text=json.dumps(document, ensure_ascii=False),
        status=status,
        content_type=FHIR_JSON,
        charset="utf-8",
        headers=headers,
    )


def _challenge(error: GatewayError) -> dict[str, str]:
    # RFC 6750 §3: no error code when credentials are absent; invalid_token / insufficient_scope.
    if isinstance(error, MissingToken):
        return {"WWW-Authenticate": f'Bearer realm="{REALM}"'}
    if isinstance(error, NotAuthenticated):
        return {"WWW-Authenticate": f'Bearer realm="{REALM}", error="invalid_token"'}
    if isinstance(error, InsufficientScope):
        return {"WWW-Authenticate": f'Bearer realm="{REALM}", error="insufficient_scope"'}
    return {}


def _from_http_exception(exc: web.HTTPException) -> GatewayError:
    if exc.status == 404:
        return NotFound("no such resource or path", code="not-found")
    if exc.status == 413:
        return OutOfResources("the request body is too large", code="too-costly")
    if exc.status == 405:
        return InvalidInput("this interaction is not supported here", code="not-supported")
    return InvalidInput(exc.reason or "invalid request", code="invalid")


@web.middleware
async def error_boundary(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure leaves as an OperationOutcome; our own bugs as an opaque 500."""
    request_id = request.headers.get("X-Request-Id", "")[:64] or uuid.uuid4().hex
    request[REQUEST_ID] = request_id
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        error = _from_http_exception(exc)
        document = operation_outcome(error, status=exc.status, diagnostics=error.message)
        allow = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        response = fhir_response(document, exc.status, allow)
    except GatewayError as exc:
        status, document = outcome_for(exc)
        response = fhir_response(document, status, _challenge(exc))
    except Exception:
        log.exception("unhandled error (correlation id %s)", request_id)
        document = operation_outcome(
            None, status=500, diagnostics="internal error", correlation_id=request_id
        )
        response = fhir_response(document, 500)
    response.headers["X-Request-Id"] = request_id
    return response


async def authenticate(request: web.Request, resource_type: str, interaction: str) -> Principal:
    """The caller's Principal, after checking the token and the scope; failures are audited."""
    app = request.app
    try:
        token = bearer_token(request.headers.get("Authorization"))
        principal = await asyncio.to_thread(app[VALIDATOR].validate, token)
    except NotAuthenticated as exc:
        await asyncio.to_thread(_audit_access_failure, app, request, exc, None)
        raise
    try:
        require_scope(principal, resource_type, interaction)
    except Forbidden as exc:
        await asyncio.to_thread(_audit_access_failure, app, request, exc, principal)
        raise
    return principal


def _audit_access_failure(
    app: web.Application, request: web.Request, error: GatewayError, principal: Principal | None
) -> None:
    reason = "missing-token" if isinstance(error, MissingToken) else error.code
    if isinstance(error, InvalidToken):
        reason = "invalid-token"
    actor = Actor(
        reference=UNIDENTIFIED_CLIENT, display="unauthenticated client",
        network_address=request.remote or "",
    )  # fmt: skip
    if principal is not None:
        actor = Actor(
            reference=principal.actor.reference or UNIDENTIFIED_CLIENT,
            roles=principal.roles, token_id=principal.actor.token_id,
            network_address=request.remote or "",
        )  # fmt: skip
    event = PipelineEvent(
        kind=Event.AUTHENTICATION_FAILED if principal is None else Event.AUTHORIZATION_FAILED,
        actor=actor,
        occurred_at=datetime.now(UTC),
        outcome="4",
        # The diagnostics never contain the token: they come from our own messages.
        outcome_desc=error.message,
        request_id=request.get(REQUEST_ID, ""),
        detail={"reason": reason, "method": request.method, "path": request.path},
    )
    with app[ENGINE].begin() as conn:
        record_event(conn, event)


async def healthz(_request: web.Request) -> web.Response:
    """Liveness: the process answers."""
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Readiness: 200 when the readiness facts say ready (or degraded), 503 otherwise."""
    facts = await asyncio.to_thread(request.app[READINESS])
    ready = facts.get("status") in {"ready", "degraded"}
    return web.json_response(facts, status=200 if ready else 503)


async def metadata(request: web.Request) -> web.Response:
    """FHIR `capabilities` interaction (GET [base]/metadata), generated from the route table."""
    return fhir_response(capability_statement(request.app[SETTINGS], ROUTES))


async def well_known(request: web.Request) -> web.Response:
    """SMART discovery, public."""
    return web.json_response(smart_configuration(request.app[SETTINGS]))


async def jwks(request: web.Request) -> web.Response:
    """The public keys tokens are verified with (the embedded issuer's JWKS)."""
    return web.json_response(request.app[VALIDATOR].public_jwks())


async def token(request: web.Request) -> web.Response:
    """SMART Backend Services token endpoint of the embedded issuer (RFC 6749 §4.4)."""
    form = {k: str(v) for k, v in (await request.post()).items()}
    try:
        document = await asyncio.to_thread(request.app[BACKEND].token, form)
    except OAuthError as exc:
        return web.json_response(exc.body(), status=exc.status, headers=_no_store())
    return web.json_response(document, headers=_no_store())


async def introspect(request: web.Request) -> web.Response:
    """RFC 7662 token introspection; the caller needs a valid bearer token of its own."""
    await asyncio.to_thread(
        request.app[VALIDATOR].validate, bearer_token(request.headers.get("Authorization"))
    )
    form = await request.post()
    document = await asyncio.to_thread(request.app[BACKEND].introspect, str(form.get("token", "")))
    return web.json_response(document, headers=_no_store())


def _no_store() -> dict[str, str]:
    return {"Cache-Control": "no-store", "Pragma": "no-cache"}


async def _body(request: web.Request) -> Any:
    if request.method not in {"POST", "PUT", "PATCH"} or not request.body_exists:
        return None
    try:
        return await request.json(loads=json.loads)
    except json.JSONDecodeError:
        raise InvalidInput("the body is not JSON", code="structure") from None


def bind(route: Route) -> Handler:
    """The aiohttp handler of one route: authenticate, run the interaction, notify hooks."""

    async def handle(request: web.Request) -> web.StreamResponse:
        app = request.app
        principal: Principal | None = None
        status, outcome_text = 500, ""
        references: tuple[str, ...] = ()
        patients: tuple[str, ...] = ()
        try:
            if not route.public:
                principal = await authenticate(request, route.scope_resource, route.scope)
            fhir_request = FhirRequest(
                method=request.method,
                path=request.path,
                params=dict(request.match_info),
                query=tuple(request.query.items()),
                headers={k.lower(): v for k, v in request.headers.items()},
                body=await _body(request),
                principal=principal,
                request_id=request.get(REQUEST_ID, ""),
                remote=request.remote or "",
                base=app[SETTINGS].http.fhir_base(),
                raw_query=request.query_string,
            )
            result = await asyncio.to_thread(route.handler, app[FHIR_CONTEXT], fhir_request)
            status, references, patients = result.status, result.touched, result.patients
        except GatewayError as exc:
            status, outcome_text = http_status_for(exc), exc.message
            raise
        except web.HTTPException as exc:
            status, outcome_text = exc.status, exc.reason
            raise
        finally:
            record = InteractionRecord(
                interaction=route.operation or route.interaction,
                resource_type=route.resource_type, method=request.method, path=request.path,
                status=status, references=tuple(references), patients=tuple(patients),
                query=request.query_string, principal=principal,
                request_id=request.get(REQUEST_ID, ""), remote=request.remote or "",
                occurred_at=datetime.now(UTC), outcome_text=outcome_text,
            )  # fmt: skip
            await asyncio.to_thread(app[INTERACTION_HOOKS].notify, record)
        document = result.resource
        if document is None:
            return web.Response(status=result.status, headers=result.headers)
        if not may_see_phi(principal):
            document = mask_phi(document)
        return fhir_response(document, result.status, result.headers)

    handle.__name__ = route.handler.__name__
    return handle


def build_http_app(
    settings: Settings,
    engine: Engine,
    review_service: ReviewService,
    token_validator: TokenValidator,
    readiness: Readiness,
    hooks: InteractionHooks | None = None,
) -> web.Application:
    """The aiohttp application: health, SMART discovery and every route of the FHIR table."""
    app = web.Application(
        middlewares=[error_boundary], client_max_size=settings.http.max_body_bytes
    )
    app[SETTINGS] = settings
    app[ENGINE] = engine
    app[REVIEW] = review_service
    app[VALIDATOR] = token_validator
    app[READINESS] = readiness
    app[FHIR_CONTEXT] = FhirContext(settings, engine, review_service)
    app[INTERACTION_HOOKS] = hooks or InteractionHooks()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get(f"{FHIR_PREFIX}/metadata", metadata)
    app.router.add_get("/.well-known/smart-configuration", well_known)
    app.router.add_get(f"{FHIR_PREFIX}/.well-known/smart-configuration", well_known)
    app[BACKEND] = BackendTokenService(settings, token_validator, engine)
    if not (settings.auth.jwks_path or settings.auth.jwks_uri):
        app.router.add_get(f"{FHIR_PREFIX}/auth/jwks", jwks)
        app.router.add_post(f"{FHIR_PREFIX}/auth/token", token)
        app.router.add_post(f"{FHIR_PREFIX}/auth/introspect", introspect)
    for route in ROUTES:
        app.router.add_route(route.method, FHIR_PREFIX + route.path, bind(route))
    return app
