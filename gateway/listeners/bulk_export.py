"""HTTP side of the FHIR Bulk Data system-level `$export` of the audit trail (Bulk Data IG v2).

- kick-off `GET /fhir/$export?_type=AuditEvent,Provenance&_since=...` with
  `Prefer: respond-async` → 202 and `Content-Location` of the status URL;
- status `GET /fhir/$export-status/{id}` → 202 with `X-Progress` and `Retry-After` while running,
  200 with the completion manifest (`transactionTime`, `request`, `requiresAccessToken`,
  `output[type,url,count]`, `error`) when done; `DELETE` cancels (202);
- files `GET /fhir/$export-file/{id}/{Type}.ndjson` (`application/fhir+ndjson`), same token.

The caller needs search scope on each exported type; auditors without PHI rights get masked
resources, as from the FHIR search. Kick-off, completion and downloads are audited.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from fhir_mapping.balp import RestInteraction, balp_audit_event
from gateway.audit.activity import activity_event
from gateway.audit.bulk import BulkExportStore, ExportJob, parse_kickoff
from gateway.audit.package import PhiMasker
from gateway.audit.trail import append
from gateway.auth.tokens import Principal
from gateway.domain.errors import InvalidInput
from gateway.fhir_api.access import may_see_phi
from gateway.listeners.http import ENGINE, REQUEST_ID, SETTINGS, authenticate

STORE = web.AppKey("bulk_export_store", BulkExportStore)
JOBS: web.AppKey[set[asyncio.Task[None]]] = web.AppKey("bulk_export_jobs")
NDJSON = "application/fhir+ndjson"


def _owner(principal: Principal) -> str:
    return principal.actor.reference or str(getattr(principal, "client_id", "")) or "anonymous"


async def _principal(request: web.Request, types: tuple[str, ...]) -> Principal:
    principal: Principal | None = None
    for resource_type in types:
        principal = await authenticate(request, resource_type, "s")
    assert principal is not None
    return principal


def _audit_request(request: web.Request, principal: Principal, status: int) -> None:
    settings = request.app[SETTINGS]
    rest = RestInteraction(
        interaction="operation",
        method=request.method,
        path=request.path,
        status=status,
        references=(),
        query=request.query_string,
        user=principal.actor,
        client_id=str(getattr(principal, "client_id", "") or ""),
        client_address=request.remote or "",
        server_address=urlsplit(settings.http.fhir_base()).hostname or "localhost",
        request_id=request.get(REQUEST_ID, ""),
        occurred_at=datetime.now(UTC),
    )
    with request.app[ENGINE].begin() as conn:
        append(conn, "AuditEvent", balp_audit_event(rest))


async def kickoff(request: web.Request) -> web.StreamResponse:
    """Bulk Data kick-off (system level)."""
    types, since = parse_kickoff(dict(request.query))
    principal = await _principal(request, types)
    if "respond-async" not in request.headers.get("Prefer", ""):
        raise InvalidInput("$export needs the header Prefer: respond-async", code="required")
    app = request.app
    base = app[SETTINGS].http.fhir_base()
    url = f"{base}/$export" + (f"?{request.query_string}" if request.query_string else "")
    job = await asyncio.to_thread(app[STORE].create, _owner(principal), types, since, url)
    await asyncio.to_thread(_audit_request, request, principal, 202)
    transform = None if may_see_phi(principal) else PhiMasker(enabled=True).resource
    task = asyncio.create_task(asyncio.to_thread(_run, app, job, base, transform, principal))
    app[JOBS].add(task)
    task.add_done_callback(app[JOBS].discard)
    status_url = f"{base}/$export-status/{job.id}"
    return web.Response(status=202, headers={"Content-Location": status_url})


def _run(
    app: web.Application, job: ExportJob, base: str, transform: Any, principal: Principal
) -> None:
    state = app[STORE].run(
        app[ENGINE], job, lambda job_id, name: f"{base}/$export-file/{job_id}/{name}", transform
    )
    counts = {o["type"]: str(o["count"]) for o in state["output"]}
    with app[ENGINE].begin() as conn:
        append(
            conn,
            "AuditEvent",
            activity_event(
                "bulk-export",
                actor=principal.actor,
                action="R",
                export=True,
                detail={
                    "export-job": job.id,
                    "status": str(state["status"]),
                    "types": ",".join(job.types),
                    "since": job.since.isoformat() if job.since else "",
                    "audit-events": counts.get("AuditEvent", "0"),
                    "provenances": counts.get("Provenance", "0"),
                },
            ),
        )


async def status(request: web.Request) -> web.StreamResponse:
    """Bulk Data status request."""
    principal = await _principal(request, ("AuditEvent",))
    state = await asyncio.to_thread(
        request.app[STORE].state, request.match_info["id"], _owner(principal)
    )
    if state["status"] == "in-progress":
        return web.Response(
            status=202, headers={"X-Progress": str(state["progress"]), "Retry-After": "1"}
        )
    if state["status"] == "failed":
        raise InvalidInput(
            "; ".join(e["text"] for e in state["error"]) or "the export failed", code="exception"
        )
    manifest = {
        "transactionTime": state["transactionTime"],
        "request": state["request"],
        "requiresAccessToken": True,
        "output": state["output"],
        "error": state["error"],
    }
    return web.json_response(manifest)


async def cancel(request: web.Request) -> web.StreamResponse:
    """Bulk Data delete request: the job and its files are removed."""
    principal = await _principal(request, ("AuditEvent",))
    await asyncio.to_thread(request.app[STORE].cancel, request.match_info["id"], _owner(principal))
    return web.Response(status=202)


async def output_file(request: web.Request) -> web.StreamResponse:
    """One NDJSON output file, for the job's owner only."""
    name = request.match_info["name"]
    resource_type = name.removesuffix(".ndjson")
    principal = await _principal(request, (resource_type,) if resource_type else ("AuditEvent",))
    path = await asyncio.to_thread(
        request.app[STORE].file, request.match_info["id"], name, _owner(principal)
    )
    await asyncio.to_thread(_audit_request, request, principal, 200)
    return web.FileResponse(path, headers={"Content-Type": NDJSON})


def register_bulk_export(app: web.Application) -> None:
    """Add the `$export` routes; jobs live under `<data_dir>/bulk-export`."""
    app[STORE] = BulkExportStore(app[SETTINGS].storage.data_dir / "bulk-export")
    app[JOBS] = set()
    app.router.add_get("/fhir/$export", kickoff)
    app.router.add_get("/fhir/$export-status/{id}", status)
    app.router.add_delete("/fhir/$export-status/{id}", cancel)
    app.router.add_get("/fhir/$export-file/{id}/{name}", output_file)

    async def _drain(_app: web.Application) -> None:
        running: set[asyncio.Task[None]] = app[JOBS]
        await asyncio.gather(*running, return_exceptions=True)

    app.on_cleanup.append(_drain)
