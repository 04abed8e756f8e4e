"""QIDO-RS search and WADO-RS retrieve handlers (PS3.18 10.6 and 10.4) for review apps.

Instances are streamed from the spool in a multipart/related body; metadata comes from the
DICOMweb index; rendered and thumbnail images are drawn off the event loop.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import web
from sqlalchemy import Connection, and_, func, select

from gateway.auth.tokens import Principal
from gateway.domain.errors import InvalidInput
from gateway.fhir_api.core import InteractionRecord
from gateway.listeners.dicomweb_common import PREFIX, base_url, dicom_json_response, error_response
from gateway.listeners.http import ENGINE, INTERACTION_HOOKS, REQUEST_ID, authenticate
from gateway.persistence.tables import instance_attributes as ia
from gateway.persistence.tables import instances
from gateway.qido import parse_query, result, search
from gateway.rendering import MEDIA_TYPES, THUMBNAIL_SIZE, Window, parse_viewport, render

CHUNK = 1024 * 1024
_SCOPE_KEYS = {
    "study": "StudyInstanceUID",
    "series": "SeriesInstanceUID",
    "instance": "SOPInstanceUID",
}


def _scope(request: web.Request) -> dict[str, str]:
    return {_SCOPE_KEYS[k]: v for k, v in request.match_info.items() if k in _SCOPE_KEYS}


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    response = dicom_json_response(body, status)
    response.headers.update(headers or {})
    return response


def _base(request: web.Request) -> str:
    return base_url(request) + PREFIX


async def _audit(
    request: web.Request,
    principal: Principal,
    interaction: str,
    status: int,
    rows: list[Any],
) -> None:
    """Reads of patient data are audited as the FHIR interactions are (IHE BALP), per patient."""
    studies = sorted({str(_get(r, "study_instance_uid")) for r in rows})
    record = InteractionRecord(
        interaction=interaction,
        resource_type="ImagingStudy",
        method=request.method,
        path=request.path,
        status=status,
        references=tuple(f"ImagingStudy/{uid}" for uid in studies[:50]),
        patients=tuple(sorted({str(_get(r, "patient_id")) for r in rows} - {"", "None"})),
        query=request.query_string,
        principal=principal,
        request_id=request.get(REQUEST_ID, ""),
        remote=request.remote or "",
        occurred_at=datetime.now(UTC),
    )
    await asyncio.to_thread(request.app[INTERACTION_HOOKS].notify, record)


def _get(row: Any, key: str) -> Any:
    return row[key] if isinstance(row, dict) else getattr(row, key, "")


def search_handler(level: str) -> Any:
    """A QIDO-RS handler for `level` (study, series or instance)."""

    async def handler(request: web.Request) -> web.Response:
        principal = await authenticate(request, "ImagingStudy", "s")
        try:
            query, warnings = parse_query(level, dict(request.query), _scope(request))
        except InvalidInput as exc:
            return error_response(400, exc.message)

        def run() -> list[dict[str, Any]]:
            with request.app[ENGINE].connect() as conn:
                return search(conn, query)

        rows = await asyncio.to_thread(run)
        await _audit(request, principal, "search-type", 200, rows)
        base = _base(request)
        headers = {"Warning": ", ".join(warnings)} if warnings else {}
        return _json([result(level, r, base) for r in rows], headers=headers)

    return handler


def _latest(conn: Connection, scope: dict[str, str], table: Any) -> list[Any]:
    newest = (
        select(table.c.sop_instance_uid, func.max(table.c.version).label("newest"))
        .group_by(table.c.sop_instance_uid)
        .subquery()
    )
    keys = {
        "StudyInstanceUID": table.c.study_instance_uid,
        "SeriesInstanceUID": table.c.series_instance_uid,
        "SOPInstanceUID": table.c.sop_instance_uid,
    }
    statement = (
        select(table)
        .join(
            newest,
            and_(
                table.c.sop_instance_uid == newest.c.sop_instance_uid,
                table.c.version == newest.c.newest,
            ),
        )
        .where(*(keys[k] == v for k, v in scope.items()))
        .order_by(table.c.series_instance_uid, table.c.sop_instance_uid)
    )
    return list(conn.execute(statement))


async def _rows(request: web.Request, table: Any) -> list[Any]:
    scope = _scope(request)

    def run() -> list[Any]:
        with request.app[ENGINE].connect() as conn:
            return _latest(conn, scope, table)

    return await asyncio.to_thread(run)


async def retrieve_instances(request: web.Request) -> web.StreamResponse:
    """WADO-RS Retrieve Study/Series/Instance (PS3.18 10.4) as multipart/related DICOM."""
    principal = await authenticate(request, "ImagingStudy", "r")
    rows = await _rows(request, instances)
    if not rows:
        return error_response(404, "no such study, series or instance")
    await _audit(request, principal, "read", 200, await _rows(request, ia))
    boundary = f"wado-{secrets.token_hex(12)}"
    response = web.StreamResponse(
        headers={
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'
        }
    )
    await response.prepare(request)
    for row in rows:
        await response.write(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode())
        fh = await asyncio.to_thread(Path(row.path).open, "rb")
        try:
            while chunk := await asyncio.to_thread(fh.read, CHUNK):
                await response.write(chunk)
        finally:
            fh.close()
        await response.write(b"\r\n")
    await response.write(f"--{boundary}--\r\n".encode())
    await response.write_eof()
    return response


async def retrieve_metadata(request: web.Request) -> web.Response:
    """WADO-RS Retrieve Metadata (PS3.18 10.4.1.1.2) in application/dicom+json."""
    principal = await authenticate(request, "ImagingStudy", "r")
    rows = await _rows(request, ia)
    if not rows:
        return error_response(404, "no such study, series or instance")
    await _audit(request, principal, "read", 200, rows)
    return _json([json.loads(r.dicom_json) for r in rows])


def _media_type(request: web.Request) -> str | None:
    accept = request.headers.get("Accept", "")
    if not accept.strip() or "*/*" in accept or "image/*" in accept:
        return "image/jpeg"
    for item in accept.split(","):
        media = item.split(";")[0].strip().lower()
        if media in MEDIA_TYPES:
            return media
    return None


def rendered_handler(thumbnail: bool) -> Any:
    """WADO-RS Retrieve Rendered Instance, or its thumbnail (PS3.18 10.4.1.1.3, 10.4.1.1.4)."""

    async def handler(request: web.Request) -> web.Response:
        principal = await authenticate(request, "ImagingStudy", "r")
        media_type = _media_type(request)
        if media_type is None:
            return error_response(406, "rendered images are image/jpeg or image/png")
        try:
            window = Window.parse(request.query["window"]) if "window" in request.query else None
            viewport = (
                parse_viewport(request.query["viewport"])
                if "viewport" in request.query
                else (THUMBNAIL_SIZE if thumbnail else None)
            )
        except InvalidInput as exc:
            return error_response(400, exc.message)
        rows = await _rows(request, instances)
        if not rows:
            return error_response(404, "no such instance")
        await _audit(request, principal, "read", 200, await _rows(request, ia))
        try:
            image = await asyncio.to_thread(
                render, Path(rows[0].path), media_type, window, viewport
            )
        except InvalidInput as exc:
            return error_response(400, exc.message)
        return web.Response(body=image, content_type=media_type)

    return handler
