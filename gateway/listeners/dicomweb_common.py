"""What every DICOMweb response shares: the media type, errors in DICOM JSON, the public base."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from gateway.listeners.http import SETTINGS

PREFIX = "/dicomweb"
DICOM_JSON = "application/dicom+json"


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
    # Compared as written: parse_mimetype would split "dicom+json" into a subtype and a suffix.
    return any(item.split(";")[0].strip().lower() in offered for item in header.split(","))
