"""The HTTP side shared by the UPS-RS, FHIR and webhook updaters: one session, timeouts, errors.

Transport errors never cross the `WorklistUpdater` Protocol: a connection failure, a timeout, a
429 or a 5xx become DeliveryFailed (the outbox retries); other answers are judged by the adapter.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from multidict import CIMultiDict

from gateway.domain.errors import DeliveryFailed

RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
SIGNATURE_HEADER = "X-Hitl-Signature"
TIMESTAMP_HEADER = "X-Hitl-Timestamp"


def read_secret(path: str) -> str:
    """The first line of a credential file ('' for no file), so secrets stay out of settings."""
    if not path:
        return ""
    return Path(path).read_text(encoding="utf-8").strip()


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    """HMAC-SHA256 over `<timestamp>.<body>`, as `v1=<hex>` (the receiver recomputes it)."""
    digest = hmac.new(secret, timestamp.encode("ascii") + b"." + body, hashlib.sha256)
    return f"v1={digest.hexdigest()}"


@dataclass(frozen=True, slots=True)
class Reply:
    """One HTTP answer, read completely."""

    status: int
    headers: Mapping[str, str]  # case-insensitive
    body: bytes

    def json(self) -> Any:
        """The body as JSON (None when empty)."""
        return json.loads(self.body) if self.body else None

    @property
    def warning(self) -> str:
        """The Warning header (PS3.18 uses `299 <service>: <text>` for DIMSE status detail)."""
        return self.headers.get("Warning", "")


class HttpPeer:
    """An HTTP client for one peer: bearer token, timeout, and a lazily created session."""

    def __init__(self, base_url: str, *, timeout: float, bearer_token: str = "") -> None:
        self.base_url = base_url.rstrip("/")
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._token = bearer_token
        self._session: aiohttp.ClientSession | None = None

    def _headers(self, extra: dict[str, str] | None) -> dict[str, str]:
        headers = dict(extra or {})
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        return headers

    async def request(
        self,
        method: str,
        url: str,
        *,
        headers: dict[str, str] | None = None,
        body: bytes | None = None,
        params: dict[str, str] | None = None,
    ) -> Reply:
        """Send one request; transport failures and retryable statuses raise DeliveryFailed."""
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        try:
            async with self._session.request(
                method,
                url,
                headers=self._headers(headers),
                data=body,
                params=params,
                allow_redirects=False,
            ) as response:
                reply = Reply(response.status, CIMultiDict(response.headers), await response.read())
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise DeliveryFailed(f"{method} {url}: {type(exc).__name__}: {exc}") from exc
        if reply.status in RETRYABLE_STATUS:
            raise DeliveryFailed(f"{method} {url}: HTTP {reply.status} {reply.warning}".rstrip())
        return reply

    async def aclose(self) -> None:
        """Close the session (at shutdown)."""
        if self._session is not None:
            await self._session.close()
