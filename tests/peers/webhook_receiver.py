"""A vendor worklist API (or an alert sink) receiving signed JSON POSTs, checking each signature.

It recomputes HMAC-SHA256 over `<X-Hitl-Timestamp>.<body>` with the shared secret, refuses a bad
signature (401) or a stale timestamp (401), answers `status` for accepted posts and keeps the
documents it accepted; repeats of one Idempotency-Key are acknowledged and not applied twice.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from typing import Any

from aiohttp import web

from tests.peers.aiohttp_thread import ThreadedHttpPeer

MAX_SKEW_SECONDS = 300


class WebhookReceiver(ThreadedHttpPeer):
    """POST / with signature checks."""

    def __init__(self, secret: str, status: int = 200) -> None:
        self.secret = secret.encode("utf-8")
        self.status = status
        self.received: list[dict[str, Any]] = []
        self.keys: list[str] = []
        self.rejected = 0
        self.arrived = threading.Condition()
        app = web.Application()
        app.router.add_post("/", self._post)
        super().__init__(app)

    async def _post(self, request: web.Request) -> web.Response:
        body = await request.read()
        timestamp = request.headers.get("X-Hitl-Timestamp", "")
        expected = hmac.new(self.secret, timestamp.encode() + b"." + body, hashlib.sha256)
        given = request.headers.get("X-Hitl-Signature", "")
        fresh = timestamp.isdigit() and abs(time.time() - int(timestamp)) <= MAX_SKEW_SECONDS
        if not fresh or not hmac.compare_digest(given, f"v1={expected.hexdigest()}"):
            self.rejected += 1
            return web.Response(status=401, text="bad signature")
        if self.status >= 300:
            return web.Response(status=self.status, text="not accepted")
        key = request.headers.get("Idempotency-Key", "")
        with self.arrived:
            if key not in self.keys:
                self.keys.append(key)
                self.received.append(json.loads(body))
            self.arrived.notify_all()
        return web.Response(status=self.status, headers={"X-Request-Id": f"wh-{len(self.keys)}"})

    def wait_for(self, count: int, timeout: float) -> list[dict[str, Any]]:
        """Block until `count` documents were accepted (or the timeout passed)."""
        with self.arrived:
            self.arrived.wait_for(lambda: len(self.received) >= count, timeout=timeout)
            return list(self.received)
