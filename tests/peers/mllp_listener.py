"""A real MLLP listener (the `hl7` package's asyncio MLLP server, optionally TLS) as the RIS.

It runs on its own event loop in a thread so that both synchronous and asynchronous tests can
use it, ACKs with AA by default and can be told to NAK (AE/AR) or drop connections.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
from typing import Any, Literal

import hl7
from hl7.mllp import start_hl7_server

Mode = Literal["AA", "AE", "AR", "drop"]


class MllpListener:
    """The RIS side of HL7 v2 delivery, on 127.0.0.1."""

    def __init__(self, port: int = 0, mode: Mode = "AA", tls: ssl.SSLContext | None = None) -> None:
        self.port = port
        self.tls = tls
        self.mode: Mode = mode
        self.messages: list[str] = []
        self._received = threading.Condition()
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    async def _on_client(self, reader: Any, writer: Any) -> None:
        try:
            while not reader.at_eof():
                message = await reader.readmessage()
                if self.mode == "drop":
                    writer.close()
                    return
                with self._received:
                    self.messages.append(str(message))
                    self._received.notify_all()
                writer.writemessage(message.create_ack(ack_code=self.mode))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def start(self) -> MllpListener:
        """Listen on 127.0.0.1 and return once the port is bound."""
        self._thread.start()
        server: asyncio.Server = asyncio.run_coroutine_threadsafe(
            start_hl7_server(
                self._on_client, "127.0.0.1", self.port, ssl=self.tls, encoding="utf-8"
            ),
            self._loop,
        ).result(timeout=10)
        self._server = server
        self.port = int(server.sockets[0].getsockname()[1])
        return self

    @staticmethod
    async def _close(server: asyncio.Server) -> None:
        server.close()
        await server.wait_closed()

    def stop(self) -> None:
        """Close the server and its loop."""
        if self._server is not None:
            # Closed on its own loop: asyncio.Server is not thread-safe.
            asyncio.run_coroutine_threadsafe(self._close(self._server), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    def wait_for_messages(self, count: int, timeout: float) -> list[hl7.Message]:
        """Block until `count` messages arrived (or the timeout passed); returns them parsed."""
        with self._received:
            self._received.wait_for(lambda: len(self.messages) >= count, timeout=timeout)
            return [hl7.parse(m) for m in self.messages]
