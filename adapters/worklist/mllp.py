"""HL7 v2 over MLLP (v2.5.1 Appendix C, MLLP release 1), optionally TLS, as a `WorklistUpdater`.

One connection per message: the RIS sees a short, complete exchange, and a half-open connection
never outlives a delivery. Every transport failure becomes DeliveryFailed (retry); only an
explicit reject (MSA-1 AR/CR) becomes DeliveryRefused (dead letter). Neutral priority changes are
rendered here, at delivery time, in the message structure the destination's profile names.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl

from adapters.worklist.hl7_messages import control_id_of, parse_ack
from adapters.worklist.hl7_render import Hl7Profile
from gateway.domain.errors import DeliveryFailed, DeliveryRefused, InvalidInput
from gateway.domain.worklist import PRIORITY_CHANGE_KIND, PriorityChange
from gateway.ports import WorklistMessage

log = logging.getLogger(__name__)

START_BLOCK = b"\x0b"
END_BLOCK = b"\x1c\x0d"
ACCEPTED = frozenset({"AA", "CA"})
RETRY = frozenset({"AE", "CE"})
REJECTED = frozenset({"AR", "CR"})


def frame(payload: str) -> bytes:
    """The MLLP block for one message: <VT> data <FS><CR>."""
    return START_BLOCK + payload.encode("utf-8") + END_BLOCK


def unframe(block: bytes) -> str:
    """The message inside an MLLP block (bytes before <VT> are ignored, as MLLP allows)."""
    start = block.find(START_BLOCK)
    if start < 0 or not block.endswith(END_BLOCK):
        raise InvalidInput("not an MLLP block")
    return block[start + 1 : -len(END_BLOCK)].decode("utf-8", errors="replace")


class MllpWorklistUpdater:
    """Sends HL7 v2 messages to one RIS over MLLP and settles each by its ACK."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        timeout: float,
        max_ack_bytes: int = 1 << 20,
        profile: Hl7Profile | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self._host = host
        self._port = port
        self._timeout = timeout
        self._limit = max_ack_bytes
        self._profile = profile or Hl7Profile()
        self._tls = tls

    def render(self, message: WorklistMessage) -> str:
        """The ER7 text to send: a neutral change rendered by the profile, else the payload."""
        if message.kind != PRIORITY_CHANGE_KIND:
            return message.payload
        return self._profile.render(PriorityChange.from_json(message.payload))

    async def deliver(self, message: WorklistMessage) -> str:
        """Send one message and wait for its ACK; returns the ACK's MSH-10 (else MSA-2)."""
        try:
            payload = self.render(message)
            sent_id = control_id_of(payload)
        except InvalidInput as exc:
            raise DeliveryRefused(f"outbox {message.outbox_id}: {exc.message}") from exc
        ack = await self._exchange(frame(payload))
        try:
            code, acked_id, text = parse_ack(ack)
        except InvalidInput as exc:
            raise DeliveryFailed(f"unreadable ACK from {self._where}: {exc.message}") from exc
        if acked_id != sent_id:
            raise DeliveryFailed(f"ACK from {self._where} is for {acked_id!r}, sent {sent_id!r}")
        if code in REJECTED:
            raise DeliveryRefused(f"{code} from {self._where}: {text}".rstrip(": "))
        if code in RETRY:
            raise DeliveryFailed(f"{code} from {self._where}: {text}".rstrip(": "))
        if code not in ACCEPTED:
            raise DeliveryFailed(f"unknown MSA-1 {code!r} from {self._where}")
        try:
            return control_id_of(ack)
        except InvalidInput:
            return acked_id

    @property
    def _where(self) -> str:
        return f"{self._host}:{self._port}"

    async def _exchange(self, block: bytes) -> str:
        try:
            async with asyncio.timeout(self._timeout):
                reader, writer = await asyncio.open_connection(
                    self._host,
                    self._port,
                    limit=self._limit,
                    ssl=self._tls,
                    server_hostname=self._host if self._tls is not None else None,
                )
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            raise DeliveryFailed(f"cannot connect to {self._where}: {exc!r}") from exc
        try:
            writer.write(block)
            async with asyncio.timeout(self._timeout):
                await writer.drain()
                reply = await reader.readuntil(END_BLOCK)
            return unframe(reply)
        except TimeoutError as exc:
            raise DeliveryFailed(f"no ACK from {self._where} within {self._timeout:g} s") from exc
        except asyncio.IncompleteReadError as exc:
            raise DeliveryFailed(f"{self._where} closed the connection before the ACK") from exc
        except (OSError, asyncio.LimitOverrunError, ValueError, InvalidInput) as exc:
            raise DeliveryFailed(f"bad exchange with {self._where}: {exc!r}") from exc
        finally:
            writer.close()
            with contextlib.suppress(OSError, TimeoutError):
                async with asyncio.timeout(self._timeout):
                    await writer.wait_closed()
