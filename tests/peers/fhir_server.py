"""An EHR FHIR R4 endpoint for ServiceRequest that enforces optimistic locking (If-Match).

No FHIR server from PyPI, Debian or npm that runs here supports versioned update with If-Match
(fhirsnake has no search parameters or versioning; HAPI needs Maven), so this peer implements
R4 http.html#update with concurrency: reads carry `ETag: W/"<versionId>"`, an update without
If-Match gets 428, a stale one 412, and each body is validated with the R4B models.
`interfere(n)` makes the next n updates meet a concurrent edit, as a busy EHR would.
"""

from __future__ import annotations

import copy
import json
import threading
from typing import Any

from aiohttp import web
from fhir.resources.R4B.servicerequest import ServiceRequest
from pydantic import ValidationError

from tests.peers.aiohttp_thread import ThreadedHttpPeer

FHIR_JSON = "application/fhir+json"


def _outcome(status: int, text: str) -> web.Response:
    document = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "processing", "diagnostics": text}],
    }
    return web.Response(status=status, text=json.dumps(document), content_type=FHIR_JSON)


class FhirServer(ThreadedHttpPeer):
    """ServiceRequest read, search by identifier and versioned update, in memory."""

    def __init__(self) -> None:
        self.orders: dict[str, dict[str, Any]] = {}
        self.updates: list[dict[str, Any]] = []
        self.refused: list[int] = []
        self._interfere = 0
        self.lock = threading.Lock()
        app = web.Application()
        app.router.add_get("/ServiceRequest", self._search)
        app.router.add_get("/ServiceRequest/{id}", self._read)
        app.router.add_put("/ServiceRequest/{id}", self._update)
        super().__init__(app)

    def add_order(
        self,
        order_id: str,
        *,
        accession: str,
        patient_id: str,
        encounter: str = "",
        priority: str = "routine",
        system: str = "urn:oid:1.2.3.4.5.6",
        status: str = "active",
    ) -> None:
        """Store a ServiceRequest at version 1."""
        resource: dict[str, Any] = {
            "resourceType": "ServiceRequest",
            "id": order_id,
            "meta": {"versionId": "1"},
            "status": status,
            "intent": "order",
            "priority": priority,
            "identifier": [
                {
                    "type": {
                        "coding": [
                            {
                                "system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                                "code": "ACSN",
                            }
                        ]
                    },
                    "system": system,
                    "value": accession,
                }
            ],
            "subject": {
                "reference": f"Patient/{patient_id.lower()}",
                "identifier": {"value": patient_id},
            },
        }
        if encounter:
            resource["encounter"] = {"reference": f"Encounter/{encounter}"}
        ServiceRequest.model_validate(resource)
        with self.lock:
            self.orders[order_id] = resource

    def interfere(self, times: int) -> None:
        """Let another client change the order just before each of the next `times` updates."""
        with self.lock:
            self._interfere = times

    async def _search(self, request: web.Request) -> web.Response:
        token = request.query.get("identifier", "")
        system, _, value = token.rpartition("|")
        with self.lock:
            found = [
                copy.deepcopy(o)
                for o in self.orders.values()
                if any(
                    i.get("value") == value and (not system or i.get("system") == system)
                    for i in o.get("identifier", [])
                )
            ]
        bundle = {
            "resourceType": "Bundle",
            "type": "searchset",
            "total": len(found),
            "entry": [{"resource": o, "search": {"mode": "match"}} for o in found],
        }
        return web.Response(text=json.dumps(bundle), content_type=FHIR_JSON)

    async def _read(self, request: web.Request) -> web.Response:
        with self.lock:
            order = self.orders.get(request.match_info["id"])
            if order is None:
                return _outcome(404, "no such ServiceRequest")
            return web.Response(
                text=json.dumps(order),
                content_type=FHIR_JSON,
                headers={"ETag": f'W/"{order["meta"]["versionId"]}"'},
            )

    async def _update(self, request: web.Request) -> web.Response:
        order_id = request.match_info["id"]
        if_match = request.headers.get("If-Match", "")
        try:
            body = json.loads(await request.read())
            ServiceRequest.model_validate(body)
        except (ValueError, ValidationError) as exc:
            self.refused.append(400)
            return _outcome(400, f"invalid ServiceRequest: {exc}")
        with self.lock:
            current = self.orders.get(order_id)
            if current is None:
                return _outcome(404, "update-as-create is not allowed here")
            if self._interfere:
                self._interfere -= 1
                current["meta"]["versionId"] = str(int(current["meta"]["versionId"]) + 1)
            version = current["meta"]["versionId"]
            if not if_match:
                self.refused.append(428)
                return _outcome(428, "updates need If-Match")
            if if_match.removeprefix("W/").strip('"') != version:
                self.refused.append(412)
                return _outcome(412, f"If-Match {if_match} is not version {version}")
            body["id"] = order_id
            body["meta"] = {"versionId": str(int(version) + 1)}
            self.orders[order_id] = body
            self.updates.append(copy.deepcopy(body))
            etag = f'W/"{body["meta"]["versionId"]}"'
        return web.Response(text=json.dumps(body), content_type=FHIR_JSON, headers={"ETag": etag})
