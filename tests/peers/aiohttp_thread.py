"""Runs an aiohttp application on 127.0.0.1 in a thread with its own event loop.

Test peers built on it serve both synchronous tests (the gateway as a subprocess) and
asynchronous ones (adapters in the test's loop) without blocking either loop.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Self

from aiohttp import web


class ThreadedHttpPeer:
    """An aiohttp `web.Application` served on a free port of 127.0.0.1."""

    def __init__(self, app: web.Application, port: int = 0) -> None:
        self.app = app
        self.port = port
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        """The peer's base URL."""
        return f"http://127.0.0.1:{self.port}"

    async def _start(self) -> None:
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()
        self.port = int(self._runner.addresses[0][1])

    def start(self) -> Self:
        """Serve, and return once the port is bound."""
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=10)
        return self

    def stop(self) -> None:
        """Stop serving and end the thread."""
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
