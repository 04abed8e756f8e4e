"""DICOMweb on the HTTP listener: the route table and the edge of STOW-RS, QIDO-RS and WADO-RS.

STOW-RS needs the `pacs` service principal (a scope that may create ImagingStudy); QIDO-RS and
WADO-RS need a reviewer's read/search scope on ImagingStudy. Responses are application/dicom+json
(PS3.18 F.2) unless a WADO-RS rendering asks for an image.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

from aiohttp import web
from aiohttp.helpers import parse_mimetype

from gateway.ingest import InstanceRecorder
from gateway.listeners.dicomweb_common import (
    DICOM_JSON,
    PREFIX,
    accepts,
    base_url,
    dicom_json_response,
    error_response,
)
from gateway.listeners.http import SETTINGS, authenticate
from gateway.listeners.retrieve import (
    rendered_handler,
    retrieve_instances,
    retrieve_metadata,
    search_handler,
)
from gateway.listeners.stow import RECORDING_THREADS, STOW_SENDER, StowRequest, TooLarge
from gateway.transfer_audit import TransferTally

RECORDER = web.AppKey("dicomweb_recorder", InstanceRecorder)
STOW_EXECUTOR = web.AppKey("dicomweb_stow_executor", ThreadPoolExecutor)
# Transfer summaries of answered requests still being written; cleanup waits for them.
PENDING_SUMMARIES = web.AppKey("dicomweb_pending_summaries", set[asyncio.Task[None]])


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
        executor=request.app[STOW_EXECUTOR],
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
        _summarise_after_response(request.app, stow)
    status, body = stow.response()
    if forced == 413:
        return dicom_json_response(body or {}, 413)
    if forced is not None and status in (200, 400):
        status = forced
    return dicom_json_response(body, status)


def _summarise_after_response(app: web.Application, stow: StowRequest) -> None:
    # As the DIMSE path writes its summary after the last C-STORE response: the task first runs
    # once this handler's task yields, by then the response is handed to the transport, and the
    # sender's next request no longer waits for the summary's transaction.
    async def summarise() -> None:
        await asyncio.get_running_loop().run_in_executor(app[STOW_EXECUTOR], stow.audit)

    pending = app[PENDING_SUMMARIES]
    task = asyncio.get_running_loop().create_task(summarise(), name="stow-transfer-summary")
    pending.add(task)
    task.add_done_callback(pending.discard)


def register_dicomweb(app: web.Application, recorder: InstanceRecorder) -> None:
    """Add the DICOMweb routes to the HTTP application."""
    app[RECORDER] = recorder
    executor = ThreadPoolExecutor(RECORDING_THREADS, thread_name_prefix="stow-record")
    app[STOW_EXECUTOR] = executor
    pending: set[asyncio.Task[None]] = set()
    app[PENDING_SUMMARIES] = pending

    async def stop_recording(_app: web.Application) -> None:
        # Requests have ended when the app is cleaned up; their summaries are written before
        # the threads stop (a summary left unwritten would wait for the next start's sweep).
        await asyncio.gather(*pending, return_exceptions=True)
        await asyncio.to_thread(executor.shutdown, wait=True)

    app.on_cleanup.append(stop_recording)
    app.router.add_post(f"{PREFIX}/studies", store_instances)
    app.router.add_post(f"{PREFIX}/studies/{{study}}", store_instances)
    study, series = f"{PREFIX}/studies/{{study}}", f"{PREFIX}/studies/{{study}}/series/{{series}}"
    instance = f"{series}/instances/{{instance}}"
    routes = [
        (f"{PREFIX}/studies", search_handler("study")),
        (f"{PREFIX}/series", search_handler("series")),
        (f"{PREFIX}/instances", search_handler("instance")),
        (f"{study}/series", search_handler("series")),
        (f"{study}/instances", search_handler("instance")),
        (f"{series}/instances", search_handler("instance")),
        (study, retrieve_instances),
        (series, retrieve_instances),
        (instance, retrieve_instances),
        (f"{study}/metadata", retrieve_metadata),
        (f"{series}/metadata", retrieve_metadata),
        (f"{instance}/metadata", retrieve_metadata),
        (f"{instance}/rendered", rendered_handler(thumbnail=False)),
        (f"{instance}/thumbnail", rendered_handler(thumbnail=True)),
    ]
    for path, handler in routes:
        app.router.add_get(path, handler)
