"""The HTTP listener's FHIR side: route table, bearer authentication and the HTTP error boundary.

Handlers are named after FHIR R4 interactions (`read`, `search-type`, `update`). Every error leaves
through one middleware as an OperationOutcome with the status from `fhir_mapping.outcome`; 401 and
403 carry RFC 6750 challenges. Only metadata, health and discovery documents are public. The
database engine is synchronous, so database work runs in worker threads.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

from aiohttp import web
from sqlalchemy import Engine

from fhir_mapping.codesystems import all_code_systems, code_system_by_id
from fhir_mapping.outcome import operation_outcome, outcome_for
from fhir_mapping.task import fhir_instant, parse_instant
from gateway.audit.trail import record_event
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
from gateway.pipeline import Event, PipelineEvent
from gateway.review_service import UNIDENTIFIED_CLIENT, ReviewService
from gateway.settings import Settings
from gateway.tasks import TaskRepository

log = logging.getLogger(__name__)

FHIR_JSON = "application/fhir+json"
REALM = "hitl-gateway"
DEFAULT_COUNT = 50

Readiness = Callable[[], dict[str, Any]]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

SETTINGS = web.AppKey("settings", Settings)
ENGINE = web.AppKey("engine", Engine)
REVIEW = web.AppKey("review_service", ReviewService)
VALIDATOR = web.AppKey("token_validator", TokenValidator)
READINESS: web.AppKey[Readiness] = web.AppKey("readiness")
REPOSITORY = web.AppKey("task_repository", TaskRepository)
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
        response = fhir_response(document, exc.status)
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
        principal = app[VALIDATOR].validate(token)
        require_scope(principal, resource_type, interaction)
    except (NotAuthenticated, Forbidden) as exc:
        await asyncio.to_thread(_audit_auth_failure, app, request, exc)
        raise
    return principal


def _audit_auth_failure(app: web.Application, request: web.Request, error: GatewayError) -> None:
    reason = "missing-token" if isinstance(error, MissingToken) else error.code
    if isinstance(error, InvalidToken):
        reason = "invalid-token"
    actor = Actor(
        reference=UNIDENTIFIED_CLIENT,
        display="unauthenticated client",
        network_address=request.remote or "",
    )
    event = PipelineEvent(
        kind=Event.AUTHENTICATION_FAILED,
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


def _version_headers(resource: dict[str, Any]) -> dict[str, str]:
    meta = resource.get("meta", {})
    headers = {"ETag": f'W/"{meta.get("versionId", "")}"'}
    if "lastUpdated" in meta:
        headers["Last-Modified"] = format_datetime(parse_instant(meta["lastUpdated"]), usegmt=True)
    return headers


async def healthz(_request: web.Request) -> web.Response:
    """Liveness: the process answers."""
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Readiness: 200 when the readiness facts say ready (or degraded), 503 otherwise."""
    facts = await asyncio.to_thread(request.app[READINESS])
    ready = facts.get("status") in {"ready", "degraded"}
    return web.json_response(facts, status=200 if ready else 503)


def capability_statement(settings: Settings) -> dict[str, Any]:
    """The minimal CapabilityStatement of what this listener serves (R4 capabilitystatement)."""
    base = settings.http.fhir_base()
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": fhir_instant(datetime.now(UTC)),
        "kind": "instance",
        "software": {"name": "hitl-gateway"},
        "implementation": {"description": "hitl-gateway FHIR endpoint", "url": base},
        "fhirVersion": "4.0.1",
        "format": ["json"],
        "rest": [
            {
                "mode": "server",
                "security": {
                    "cors": False,
                    "service": [
                        {
                            "coding": [
                                {
                                    "system": "http://terminology.hl7.org/CodeSystem/"
                                    "restful-security-service",
                                    "code": "SMART-on-FHIR",
                                }
                            ]
                        }
                    ],
                    "description": "SMART App Launch v2 bearer tokens; see "
                    ".well-known/smart-configuration",
                },
                "resource": [
                    {
                        "type": "Task",
                        "interaction": [
                            {"code": "read"},
                            {"code": "search-type"},
                            {"code": "update"},
                        ],
                        "versioning": "versioned-update",
                        "readHistory": False,
                        "updateCreate": False,
                        "conditionalUpdate": False,
                        "searchParam": [
                            {"name": "status", "type": "token"},
                            {"name": "_count", "type": "number"},
                        ],
                    },
                    {
                        "type": "CodeSystem",
                        "interaction": [{"code": "read"}, {"code": "search-type"}],
                    },
                ],
            }
        ],
    }


async def metadata(request: web.Request) -> web.Response:
    """FHIR `capabilities` interaction (GET [base]/metadata)."""
    return fhir_response(capability_statement(request.app[SETTINGS]))


def smart_configuration(settings: Settings) -> dict[str, Any]:
    """SMART App Launch v2 discovery document (.well-known/smart-configuration)."""
    issuer = settings.auth_issuer
    return {
        "issuer": issuer,
        "jwks_uri": f"{issuer}/jwks",
        "token_endpoint": f"{issuer}/token",
        "grant_types_supported": ["authorization_code", "client_credentials"],
        "token_endpoint_auth_methods_supported": ["private_key_jwt"],
        "scopes_supported": ["openid", "fhirUser", "user/Task.rus", "user/Provenance.rs"],
        "response_types_supported": ["code"],
        "capabilities": ["permission-v2", "client-confidential-asymmetric", "permission-user"],
        "code_challenge_methods_supported": ["S256"],
    }


async def well_known(request: web.Request) -> web.Response:
    """SMART discovery, public."""
    return web.json_response(smart_configuration(request.app[SETTINGS]))


async def jwks(request: web.Request) -> web.Response:
    """The public keys tokens are verified with (the embedded issuer's JWKS)."""
    return web.json_response(request.app[VALIDATOR].public_jwks())


def _read_task(app: web.Application, task_id: str) -> dict[str, Any]:
    with app[ENGINE].connect() as conn:
        return app[REPOSITORY].read(conn, task_id)


async def read_task(request: web.Request) -> web.Response:
    """FHIR `read` of a Task (ETag and Last-Modified from meta)."""
    await authenticate(request, "Task", "r")
    resource = await asyncio.to_thread(_read_task, request.app, request.match_info["id"])
    return fhir_response(resource, headers=_version_headers(resource))


def _count(request: web.Request) -> int:
    raw = request.query.get("_count", str(DEFAULT_COUNT))
    try:
        count = int(raw)
    except ValueError:
        raise InvalidInput(f"_count {raw!r} is not a number", code="value") from None
    if count < 0:
        raise InvalidInput("_count must not be negative", code="value")
    return count


async def search_tasks(request: web.Request) -> web.Response:
    """FHIR `search-type` on Task: `status` (comma list, OR) and `_count`; a searchset Bundle."""
    await authenticate(request, "Task", "s")
    statuses = [s for v in request.query.getall("status", []) for s in v.split(",") if s]
    count = _count(request)
    app = request.app

    def run() -> list[dict[str, Any]]:
        with app[ENGINE].connect() as conn:
            return app[REPOSITORY].search(conn, statuses=statuses, count=count)

    found = await asyncio.to_thread(run)
    base = app[SETTINGS].http.fhir_base()
    bundle = {
        "resourceType": "Bundle",
        "id": uuid.uuid4().hex,
        "type": "searchset",
        "total": len(found),
        "link": [{"relation": "self", "url": f"{base}/Task?{request.query_string}"}],
        "entry": [
            {"fullUrl": f"{base}/Task/{r['id']}", "resource": r, "search": {"mode": "match"}}
            for r in found
        ],
    }
    return fhir_response(bundle)


async def update_task(request: web.Request) -> web.Response:
    """FHIR `update` of a Task: If-Match required (R4: 400 without it), 412 when stale."""
    principal = await authenticate(request, "Task", "u")
    try:
        body = await request.json(loads=json.loads)
    except json.JSONDecodeError:
        raise InvalidInput("the body is not JSON", code="structure") from None
    stored = await asyncio.to_thread(
        request.app[REVIEW].complete,
        request.match_info["id"],
        body,
        request.headers.get("If-Match"),
        principal,
        request.get(REQUEST_ID, ""),
    )
    return fhir_response(stored, headers=_version_headers(stored))


async def search_code_systems(request: web.Request) -> web.Response:
    """The gateway's published CodeSystems as a searchset Bundle (needs any valid token)."""
    await _token_only(request)
    base = request.app[SETTINGS].http.fhir_base()
    entries = [
        {"fullUrl": f"{base}/CodeSystem/{c['id']}", "resource": c, "search": {"mode": "match"}}
        for c in all_code_systems()
    ]
    bundle = {"resourceType": "Bundle", "type": "searchset", "total": len(entries)}
    return fhir_response({**bundle, "entry": entries})


async def read_code_system(request: web.Request) -> web.Response:
    """One published CodeSystem by id (needs any valid token)."""
    await _token_only(request)
    found = code_system_by_id(request.match_info["id"])
    if found is None:
        raise NotFound(f"CodeSystem/{request.match_info['id']} is not published here")
    return fhir_response(found)


async def _token_only(request: web.Request) -> Principal:
    # Terminology carries no PHI, so any valid token reads it, whatever its resource scopes.
    try:
        return request.app[VALIDATOR].validate(bearer_token(request.headers.get("Authorization")))
    except NotAuthenticated as exc:
        await asyncio.to_thread(_audit_auth_failure, request.app, request, exc)
        raise


def build_http_app(
    settings: Settings,
    engine: Engine,
    review_service: ReviewService,
    token_validator: TokenValidator,
    readiness: Readiness,
) -> web.Application:
    """The aiohttp application: the whole route table in one place."""
    app = web.Application(
        middlewares=[error_boundary], client_max_size=settings.http.max_body_bytes
    )
    app[SETTINGS] = settings
    app[ENGINE] = engine
    app[REVIEW] = review_service
    app[VALIDATOR] = token_validator
    app[READINESS] = readiness
    app[REPOSITORY] = review_service.repository
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/fhir/metadata", metadata)
    app.router.add_get("/.well-known/smart-configuration", well_known)
    app.router.add_get("/fhir/.well-known/smart-configuration", well_known)
    if not settings.auth.jwks_path:
        app.router.add_get("/fhir/auth/jwks", jwks)
    app.router.add_get("/fhir/Task", search_tasks)
    app.router.add_get("/fhir/Task/{id}", read_task)
    app.router.add_put("/fhir/Task/{id}", update_task)
    app.router.add_get("/fhir/CodeSystem", search_code_systems)
    app.router.add_get("/fhir/CodeSystem/{id}", read_code_system)
    return app
