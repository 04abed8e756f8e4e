"""DICOMweb on the HTTP listener: the route table and the edge of STOW-RS, QIDO-RS and WADO-RS.

STOW-RS needs the `pacs` service principal (a scope that may create ImagingStudy); QIDO-RS and
WADO-RS need a reviewer's read/search scope on ImagingStudy. Responses are application/dicom+json
(PS3.18 F.2) unless a WADO-RS rendering asks for an image.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web
from aiohttp.helpers import parse_mimetype

from gateway.ingest import InstanceRecorder
from gateway.listeners.http import SETTINGS, authenticate
from gateway.listeners.stow import DICOM_JSON, STOW_SENDER, StowRequest, TooLarge
from gateway.transfer_audit import TransferTally

PREFIX = "/dicomweb"
RECORDER = web.AppKey("dicomweb_recorder", InstanceRecorder)


def dicom_json_response(body: Any, status: int = 200) -> web.Response:
    """A response in application/dicom+json, exactly that media type."""
    return web.Response(
        body=json.dumps(body, separators=(",", ":")).encode(),
        status=status,
        content_type=DICOM_JSON,
    )


def error_response(status: int, comment: str) -> web.Response:
    """A failure with its reason in Error Comment (0000,0902)."""
    return dicom_json_response({"00000902": {"vr": "LO", "Value": [comment[:64]]}}, status)


def base_url(request: web.Request) -> str:
    """The public base the RetrieveURLs are built on."""
    configured = request.app[SETTINGS].http.base_url.rstrip("/")
    return configured or f"{request.scheme}://{request.host}"


def accepts(request: web.Request, *media_types: str) -> bool:
    """True when the Accept header (or its absence) allows one of `media_types`."""
    header = request.headers.get("Accept", "")
    if not header.strip():
        return True
    offered = set(media_types) | {"*/*", "application/*"}
    for item in header.split(","):
        media = parse_mimetype(item.strip())
        if f"{media.type}/{media.subtype}" in offered:
            return True
    return False


async def store_instances(request: web.Request) -> web.Response:
    """STOW-RS Store Instances (PS3.18 10.5): POST /studies[/{study}]."""
    principal = await authenticate(request, "ImagingStudy", "c")
    settings = request.app[SETTINGS]
    media = parse_mimetype(request.headers.get("Content-Type", ""))
    if (media.type, media.subtype) != ("multipart", "related") or (
        media.parameters.get("type", "").strip('"').lower() != "application/dicom"
    ):
        return error_response(415, 'only multipart/related; type="application/dicom"')
    if not accepts(request, DICOM_JSON, "application/json"):
        return error_response(406, "responses are application/dicom+json")
    limit = settings.http.stow_max_request_bytes
    if request.content_length is not None and request.content_length > limit:
        return error_response(413, "the request body exceeds the size limit")
    recorder = request.app[RECORDER]
    tally = TransferTally(
        principal.actor.display or STOW_SENDER,
        request.remote or "",
        transport="STOW-RS",
        actor=principal.actor,
    )
    stow = StowRequest(
        recorder,
        settings.storage.spool_dir / ".incoming",
        base_url(request),
        request.match_info.get("study", ""),
        tally,
        max_instance_bytes=settings.http.stow_max_instance_bytes,
        max_request_bytes=limit,
    )
    forced: int | None = None
    try:
        await stow.consume(request)
    except TooLarge:
        forced = 413
    except ValueError:
        # A malformed multipart body: what was stored before the fault stays stored.
        forced = 400 if not stow.results else 202
    finally:
        await asyncio.to_thread(stow.audit)
    status, body = stow.response()
    if forced == 413:
        return dicom_json_response(body or {}, 413)
    if forced is not None and status in (200, 400):
        status = forced
    return dicom_json_response(body, status)


def register_dicomweb(app: web.Application, recorder: InstanceRecorder) -> None:
    """Add the DICOMweb routes to the HTTP application."""
    app[RECORDER] = recorder
    app.router.add_post(f"{PREFIX}/studies", store_instances)
    app.router.add_post(f"{PREFIX}/studies/{{study}}", store_instances)
