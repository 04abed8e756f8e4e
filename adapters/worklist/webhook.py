"""Vendor worklist APIs: the priority change as a JSON POST signed with HMAC-SHA256.

The receiver checks `X-Hitl-Signature: v1=<hex>` = HMAC-SHA256(secret, `<timestamp>.<body>`) and
refuses stale `X-Hitl-Timestamp` values (replay protection); `Idempotency-Key` lets it drop a
repeat. 2xx is delivered, 408/425/429/5xx and transport errors are retried, other 4xx refused.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

from adapters.worklist.http_peer import SIGNATURE_HEADER, TIMESTAMP_HEADER, HttpPeer, sign
from gateway.domain.errors import DeliveryRefused, InvalidInput
from gateway.domain.priority import codes_for
from gateway.domain.worklist import PRIORITY_CHANGE_KIND, PriorityChange
from gateway.ports import WorklistMessage

EVENT_TYPE = "worklist.priority-change"


def webhook_body(change: PriorityChange) -> bytes:
    """The JSON document sent: the change plus every code system's priority code."""
    codes = codes_for(change.priority)
    document = {
        "type": EVENT_TYPE,
        **json.loads(change.to_json()),
        "codes": {
            "fhir": codes.fhir.value,
            "hl7_0485": codes.hl7_0485,
            "hl7_0027": codes.hl7_0027,
            "dicom_ups": codes.ups,
        },
    }
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode("utf-8")


class WebhookWorklistUpdater:
    """POSTs each change to one URL, signed with the destination's secret."""

    def __init__(
        self,
        url: str,
        secret: str,
        *,
        timeout: float,
        bearer_token: str = "",
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not secret:
            raise InvalidInput("a webhook destination needs a secret_file")
        self._url = url
        self._secret = secret.encode("utf-8")
        self._peer = HttpPeer(url, timeout=timeout, bearer_token=bearer_token)
        self._clock = clock

    async def deliver(self, message: WorklistMessage) -> str:
        """POST the signed document; returns the receiver's X-Request-Id or the HTTP status."""
        if message.kind == PRIORITY_CHANGE_KIND:
            try:
                body = webhook_body(PriorityChange.from_json(message.payload))
            except InvalidInput as exc:
                raise DeliveryRefused(f"outbox {message.outbox_id}: {exc.message}") from exc
        else:
            body = message.payload.encode("utf-8")
        return await post_signed(self._peer, self._url, self._secret, body, message, self._clock)

    async def aclose(self) -> None:
        """Close the HTTP session."""
        await self._peer.aclose()


async def post_signed(
    peer: HttpPeer,
    url: str,
    secret: bytes,
    body: bytes,
    message: WorklistMessage,
    clock: Callable[[], float] = time.time,
) -> str:
    """POST `body` with timestamp, signature and idempotency headers; settle by the status."""
    timestamp = str(int(clock()))
    reply = await peer.request(
        "POST",
        url,
        body=body,
        headers={
            "Content-Type": "application/json",
            TIMESTAMP_HEADER: timestamp,
            SIGNATURE_HEADER: sign(secret, timestamp, body),
            "Idempotency-Key": message.idempotency_key,
        },
    )
    if 200 <= reply.status < 300:
        return reply.headers.get("X-Request-Id", "") or f"HTTP {reply.status}"
    detail = reply.body[:200].decode("utf-8", errors="replace")
    raise DeliveryRefused(f"webhook {url} answered HTTP {reply.status}: {detail}")
