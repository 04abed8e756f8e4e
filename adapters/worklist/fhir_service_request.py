"""FHIR R4 ServiceRequest as a `WorklistUpdater`, and the EHR look-up of a study's encounter.

The order is found by its accession number (`ServiceRequest?identifier=<system>|<accession>`),
read, and updated with `If-Match` on the version read (R4 http.html#concurrency). A 412 means
someone else changed the order in between: it is read again and the update retried, a bounded
number of times, so a concurrent edit is never overwritten. Orders that are no longer active
(completed, revoked, entered-in-error) are left as they are.
"""

from __future__ import annotations

import json
from typing import Any

from adapters.worklist.http_peer import HttpPeer, Reply
from gateway.domain.errors import DeliveryFailed, DeliveryRefused, InvalidInput
from gateway.domain.worklist import PriorityChange
from gateway.ports import WorklistMessage

FHIR_JSON = "application/fhir+json"
MAX_PRECONDITION_RETRIES = 3
INACTIVE = frozenset({"completed", "revoked", "entered-in-error"})


class FhirServiceRequestUpdater:
    """Updates `ServiceRequest.priority` on the EHR's FHIR server; resolves encounters."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float,
        bearer_token: str = "",
        accession_system: str = "",
    ) -> None:
        self._peer = HttpPeer(base_url, timeout=timeout, bearer_token=bearer_token)
        self._base = base_url.rstrip("/")
        self._system = accession_system

    async def deliver(self, message: WorklistMessage) -> str:
        """Set the priority on every active order for the accession; returns `id=version` pairs."""
        try:
            change = PriorityChange.from_json(message.payload)
        except InvalidInput as exc:
            raise DeliveryRefused(f"outbox {message.outbox_id}: {exc.message}") from exc
        orders = await self.search_orders(change.accession_number)
        if not orders:
            raise DeliveryFailed(f"no ServiceRequest for accession {change.accession_number} yet")
        for order in orders:
            _check_patient(order, change)
        return ";".join([await self._update(str(o["id"]), change) for o in orders])

    async def search_orders(self, accession_number: str) -> list[dict[str, Any]]:
        """ServiceRequests carrying this accession number (search-type on identifier)."""
        token = f"{self._system}|{accession_number}" if self._system else accession_number
        reply = await self._peer.request(
            "GET",
            f"{self._base}/ServiceRequest",
            params={"identifier": token},
            headers={"Accept": FHIR_JSON},
        )
        if reply.status != 200:
            raise DeliveryRefused(f"ServiceRequest search answered HTTP {reply.status}")
        bundle = reply.json() or {}
        return [
            e["resource"]
            for e in bundle.get("entry", [])
            if e.get("resource", {}).get("resourceType") == "ServiceRequest"
        ]

    async def encounter_for_accession(self, accession_number: str) -> str:
        """The Encounter id of the order with this accession ('' when the EHR has none)."""
        for order in await self.search_orders(accession_number):
            reference = str(order.get("encounter", {}).get("reference", ""))
            if reference.startswith("Encounter/"):
                return reference.removeprefix("Encounter/")
        return ""

    async def _update(self, order_id: str, change: PriorityChange) -> str:
        url = f"{self._base}/ServiceRequest/{order_id}"
        for _ in range(MAX_PRECONDITION_RETRIES + 1):
            read = await self._peer.request("GET", url, headers={"Accept": FHIR_JSON})
            if read.status != 200:
                raise DeliveryFailed(f"read ServiceRequest/{order_id}: HTTP {read.status}")
            order = read.json()
            if order.get("status") in INACTIVE:
                return f"{order_id}={order.get('status')}:unchanged"
            if order.get("priority") == change.priority.value:
                return f"{order_id}={change.priority.value}:already"
            etag = read.headers.get("ETag") or _etag_of(order)
            order["priority"] = change.priority.value
            written = await self._peer.request(
                "PUT",
                url,
                body=json.dumps(order).encode("utf-8"),
                headers={"Content-Type": FHIR_JSON, "Accept": FHIR_JSON, "If-Match": etag},
            )
            if written.status in (200, 201):
                return f"{order_id}={change.priority.value}@{_version(written)}"
            if written.status in (409, 412):
                continue  # changed since our read: read again, never overwrite
            raise DeliveryRefused(
                f"update ServiceRequest/{order_id}: HTTP {written.status} "
                f"{written.body[:200].decode('utf-8', errors='replace')}"
            )
        raise DeliveryFailed(
            f"ServiceRequest/{order_id} changed {MAX_PRECONDITION_RETRIES + 1} times during "
            "the update (412); will try again"
        )

    async def aclose(self) -> None:
        """Close the HTTP session."""
        await self._peer.aclose()


def _etag_of(order: dict[str, Any]) -> str:
    version = order.get("meta", {}).get("versionId")
    if not version:
        raise DeliveryRefused("the FHIR server gives no ETag or meta.versionId to update with")
    return f'W/"{version}"'


def _version(reply: Reply) -> str:
    return reply.headers.get("ETag", "").removeprefix("W/").strip('"') or "?"


def _check_patient(order: dict[str, Any], change: PriorityChange) -> None:
    # Only a stated, different patient identifier refuses: EHR resource ids are not MRNs.
    subject = order.get("subject", {})
    identifier = str(subject.get("identifier", {}).get("value", ""))
    if identifier and identifier != change.patient_id:
        raise DeliveryRefused(
            f"ServiceRequest/{order.get('id')} is for patient {identifier!r}, "
            f"not {change.patient_id!r}; nothing changed"
        )
