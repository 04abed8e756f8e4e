"""A UPS-RS service (PS3.18 §11) that enforces the PS3.4 Annex CC state and Transaction UID rules.

No UPS-RS product can be installed from PyPI or Debian here, so this peer implements the parts
of the standard the gateway uses, strictly: Create (SCHEDULED only, no Transaction UID), Search
(QIDO on /workitems, including Referenced Request Sequence attributes), Retrieve (never returns
the Transaction UID, CC.2.1.3), Update (SCHEDULED without a Transaction UID; IN PROGRESS only
with the one recorded; final states refused) and Change State per Table CC.1.1-2. Errors carry
the DIMSE status in `Warning: 299 ups-rs: 0xCxxx <text>`: C307 → 404, state and Transaction UID
conflicts → 409, malformed requests → 400.
"""

from __future__ import annotations

import copy
import json
import threading
from typing import Any

from aiohttp import web

from tests.peers.aiohttp_thread import ThreadedHttpPeer

DICOM_JSON = "application/dicom+json"
SOP_INSTANCE_UID = "00080018"
ACCESSION_NUMBER = "00080050"
TRANSACTION_UID = "00081195"
PATIENT_NAME = "00100010"
PATIENT_ID = "00100020"
STUDY_INSTANCE_UID = "0020000D"
REFERENCED_REQUEST_SEQUENCE = "0040A370"
PROCEDURE_STEP_STATE = "00741000"
PRIORITY = "00741200"
PERFORMED_PROCEDURE = "00741216"  # Unified Procedure Step Performed Procedure Sequence
KEYWORDS = {
    "PatientID": PATIENT_ID,
    "AccessionNumber": ACCESSION_NUMBER,
    "StudyInstanceUID": STUDY_INSTANCE_UID,
    "ProcedureStepState": PROCEDURE_STEP_STATE,
    "ScheduledProcedureStepPriority": PRIORITY,
    "ReferencedRequestSequence": REFERENCED_REQUEST_SEQUENCE,
}
PRIORITIES = {"HIGH", "MEDIUM", "LOW"}
FINAL = {"COMPLETED", "CANCELED"}
HTTP_FOR = {"C307": 404, "0106": 400, "C000": 400}


class UpsError(Exception):
    """A DIMSE status to answer with."""

    def __init__(self, code: str, text: str) -> None:
        super().__init__(text)
        self.code = code
        self.text = text


def _value(item: dict[str, Any], tag: str) -> str:
    values = item.get(tag, {}).get("Value") or [""]
    return str(values[0].get("Alphabetic", "") if isinstance(values[0], dict) else values[0])


def change_state(
    workitem: dict[str, Any] | None, requested: str, transaction_uid: str, recorded: str
) -> str:
    """PS3.4 Table CC.1.1-2: the new state, or UpsError with the status for this transition."""
    if workitem is None:
        raise UpsError("C307", "Specified SOP Instance UID does not exist")
    state = _value(workitem, PROCEDURE_STEP_STATE)
    if requested == "SCHEDULED":
        raise UpsError("C303", "The UPS may only become SCHEDULED via N-CREATE")
    if requested == "IN PROGRESS":
        if not transaction_uid:
            raise UpsError("C301", "The correct Transaction UID was not provided")
        if state == "SCHEDULED":
            return requested
        if state == "IN PROGRESS":
            raise UpsError("C302", "The UPS is already IN PROGRESS")
        raise UpsError("C300", "The UPS is already in a final state")
    if requested not in FINAL:
        raise UpsError("0106", f"ProcedureStepState {requested!r} is not a UPS state")
    if state == "SCHEDULED":
        raise UpsError("C310", "The UPS is not in the IN PROGRESS state")
    if transaction_uid != recorded:
        raise UpsError("C301", "The correct Transaction UID was not provided")
    if state == requested:
        raise UpsError("B306" if requested == "COMPLETED" else "B304", f"already {requested}")
    if state in FINAL:
        raise UpsError("C300", "The UPS is already in a final state")
    if requested == "COMPLETED" and PERFORMED_PROCEDURE not in workitem:
        raise UpsError("C304", "The UPS does not meet the final state requirements")
    return requested


class UpsRsServer(ThreadedHttpPeer):
    """The worklist manager's UPS-RS interface, in memory."""

    def __init__(self) -> None:
        self.workitems: dict[str, dict[str, Any]] = {}
        self.transactions: dict[str, str] = {}
        self.updates: list[tuple[str, dict[str, Any]]] = []
        self.claim_before_update = ""  # a performer claims the workitem just before an update
        self.lock = threading.Lock()
        app = web.Application()
        app.router.add_post("/workitems", self._create)
        app.router.add_get("/workitems", self._search)
        app.router.add_get("/workitems/{uid}", self._retrieve)
        app.router.add_post("/workitems/{uid}", self._update)
        app.router.add_put("/workitems/{uid}/state", self._state)
        super().__init__(app)

    def add_workitem(
        self,
        uid: str,
        *,
        patient_id: str,
        accession: str,
        study_uid: str,
        priority: str = "MEDIUM",
        patient_name: str = "Doe^Jane",
    ) -> None:
        """Create a SCHEDULED workitem directly (as the RIS would with Create Workitem)."""
        with self.lock:
            self.workitems[uid] = {
                SOP_INSTANCE_UID: {"vr": "UI", "Value": [uid]},
                PATIENT_ID: {"vr": "LO", "Value": [patient_id]},
                PATIENT_NAME: {"vr": "PN", "Value": [{"Alphabetic": patient_name}]},
                PROCEDURE_STEP_STATE: {"vr": "CS", "Value": ["SCHEDULED"]},
                PRIORITY: {"vr": "CS", "Value": [priority]},
                REFERENCED_REQUEST_SEQUENCE: {
                    "vr": "SQ",
                    "Value": [
                        {
                            ACCESSION_NUMBER: {"vr": "SH", "Value": [accession]},
                            STUDY_INSTANCE_UID: {"vr": "UI", "Value": [study_uid]},
                        }
                    ],
                },
            }

    def state_of(self, uid: str) -> tuple[str, str]:
        """(ProcedureStepState, ScheduledProcedureStepPriority) of a workitem."""
        with self.lock:
            item = self.workitems[uid]
            return _value(item, PROCEDURE_STEP_STATE), _value(item, PRIORITY)

    @staticmethod
    def _error(error: UpsError) -> web.Response:
        status = HTTP_FOR.get(error.code, 409)
        return web.Response(
            status=status, headers={"Warning": f"299 ups-rs: 0x{error.code} {error.text}"}
        )

    async def _body(self, request: web.Request) -> dict[str, Any]:
        if request.content_type != DICOM_JSON:
            raise UpsError("C000", f"Content-Type must be {DICOM_JSON}")
        try:
            document = json.loads(await request.read())
        except ValueError as exc:
            raise UpsError("C000", "the body is not DICOM JSON") from exc
        document = document[0] if isinstance(document, list) and document else document
        if not isinstance(document, dict):
            raise UpsError("C000", "the body is not one DICOM JSON data set")
        return document

    async def _create(self, request: web.Request) -> web.Response:
        try:
            body = await self._body(request)
            uid = request.query.get("AffectedSOPInstanceUID") or _value(body, SOP_INSTANCE_UID)
            if not uid:
                raise UpsError("C000", "no workitem UID")
            if _value(body, PROCEDURE_STEP_STATE) not in ("", "SCHEDULED"):
                raise UpsError("0106", "a workitem is created SCHEDULED")
            if _value(body, TRANSACTION_UID):
                raise UpsError("0106", "a new workitem has no Transaction UID")
            with self.lock:
                if uid in self.workitems:
                    return web.Response(status=409, headers={"Warning": "299 ups-rs: 0x0111"})
                body[SOP_INSTANCE_UID] = {"vr": "UI", "Value": [uid]}
                body[PROCEDURE_STEP_STATE] = {"vr": "CS", "Value": ["SCHEDULED"]}
                self.workitems[uid] = body
        except UpsError as error:
            return self._error(error)
        return web.Response(status=201, headers={"Location": f"{self.url}/workitems/{uid}"})

    def _matches(self, item: dict[str, Any], key: str, value: str) -> bool:
        path = key.split(".")
        tags = [KEYWORDS.get(p, p) for p in path]
        if len(tags) == 1:
            if tags[0] in (ACCESSION_NUMBER, STUDY_INSTANCE_UID):
                nested = self._nested(item, tags[0])
                return _value(item, tags[0]) == value or value in nested
            return _value(item, tags[0]) == value
        sequence = item.get(tags[0], {}).get("Value", [])
        return any(_value(child, tags[1]) == value for child in sequence)

    @staticmethod
    def _nested(item: dict[str, Any], tag: str) -> list[str]:
        sequence = item.get(REFERENCED_REQUEST_SEQUENCE, {}).get("Value", [])
        return [_value(child, tag) for child in sequence]

    async def _search(self, request: web.Request) -> web.Response:
        criteria = {k: v for k, v in request.query.items() if k not in ("limit", "offset")}
        for key in criteria:
            if key.split(".")[0] not in KEYWORDS and key != "includefield":
                return self._error(UpsError("C000", f"unsupported matching key {key}"))
        criteria.pop("includefield", None)
        with self.lock:
            found = [
                self._public(item)
                for item in self.workitems.values()
                if all(self._matches(item, k, v) for k, v in criteria.items())
            ]
        if not found:
            return web.Response(status=204)
        return web.Response(text=json.dumps(found), content_type=DICOM_JSON)

    @staticmethod
    def _public(item: dict[str, Any]) -> dict[str, Any]:
        # CC.2.1.3: the Transaction UID is never returned to anyone.
        return {k: copy.deepcopy(v) for k, v in item.items() if k != TRANSACTION_UID}

    async def _retrieve(self, request: web.Request) -> web.Response:
        with self.lock:
            item = self.workitems.get(request.match_info["uid"])
            if item is None:
                return self._error(UpsError("C307", "Specified SOP Instance UID does not exist"))
            return web.Response(text=json.dumps([self._public(item)]), content_type=DICOM_JSON)

    async def _update(self, request: web.Request) -> web.Response:
        uid = request.match_info["uid"]
        try:
            body = await self._body(request)
            if PROCEDURE_STEP_STATE in body or TRANSACTION_UID in body:
                raise UpsError("0106", "state and Transaction UID change only through /state")
            priority = _value(body, PRIORITY)
            if PRIORITY in body and priority not in PRIORITIES:
                raise UpsError("0106", f"ScheduledProcedureStepPriority {priority!r}")
            with self.lock:
                item = self.workitems.get(uid)
                if item is None:
                    raise UpsError("C307", "Specified SOP Instance UID does not exist")
                if self.claim_before_update:
                    item[PROCEDURE_STEP_STATE] = {"vr": "CS", "Value": ["IN PROGRESS"]}
                    self.transactions[uid] = self.claim_before_update
                    self.claim_before_update = ""
                state = _value(item, PROCEDURE_STEP_STATE)
                given = request.query.get("transaction", "")
                if state in FINAL:
                    raise UpsError("C300", "The UPS is already in a final state")
                if state == "IN PROGRESS" and given != self.transactions.get(uid):
                    raise UpsError("C301", "The correct Transaction UID was not provided")
                item.update(copy.deepcopy(body))
                self.updates.append((uid, body))
        except UpsError as error:
            return self._error(error)
        return web.Response(status=200)

    async def _state(self, request: web.Request) -> web.Response:
        uid = request.match_info["uid"]
        try:
            body = await self._body(request)
            requested = _value(body, PROCEDURE_STEP_STATE)
            given = _value(body, TRANSACTION_UID)
            with self.lock:
                item = self.workitems.get(uid)
                new_state = change_state(item, requested, given, self.transactions.get(uid, ""))
                assert item is not None
                item[PROCEDURE_STEP_STATE] = {"vr": "CS", "Value": [new_state]}
                if new_state == "IN PROGRESS":
                    self.transactions[uid] = given
        except UpsError as error:
            if error.code.startswith("B"):  # warnings: the state is already the one asked for
                return web.Response(status=200, headers={"Warning": f"299 ups-rs: 0x{error.code}"})
            return self._error(error)
        return web.Response(status=200)
