"""DICOM UPS-RS (PS3.18 §11) as a `WorklistUpdater`: ScheduledProcedureStepPriority on workitems.

The workitem is found with a QIDO search on `/workitems` by the accession number in the
Referenced Request Sequence, else by the Study Instance UID there. Each workitem found is then
handled by its ProcedureStepState (PS3.4 Annex CC):

- SCHEDULED: Update Workitem without a Transaction UID (CC.2.6), priority HIGH / MEDIUM / LOW;
- IN PROGRESS: only the performer holding the Transaction UID may update it (CC.1.1, status
  C301), and the gateway never performs a step, so the workitem is left as it is and the
  outcome says so; a read that has started needs no re-prioritising;
- COMPLETED / CANCELED: final (C300), left as they are.

A workitem whose Patient ID differs from the change's is never touched: the change is refused.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from adapters.worklist.http_peer import HttpPeer, Reply
from gateway.domain.errors import DeliveryFailed, DeliveryRefused, InvalidInput
from gateway.domain.priority import Priority, codes_for
from gateway.domain.worklist import PriorityChange
from gateway.ports import WorklistMessage

DICOM_JSON = "application/dicom+json"
# DICOM JSON tags (PS3.18 F.2) of the attributes the adapter reads and writes.
SOP_INSTANCE_UID = "00080018"
ACCESSION_NUMBER = "00080050"
PATIENT_NAME = "00100010"
PATIENT_ID = "00100020"
STUDY_INSTANCE_UID = "0020000D"
REFERENCED_REQUEST_SEQUENCE = "0040A370"
PROCEDURE_STEP_STATE = "00741000"
SCHEDULED_PROCEDURE_STEP_PRIORITY = "00741200"

SCHEDULED = "SCHEDULED"
IN_PROGRESS = "IN PROGRESS"
COMPLETED = "COMPLETED"
CANCELED = "CANCELED"


@dataclass(frozen=True, slots=True)
class UpsStatus:
    """A PS3.4 Annex CC status and what the gateway does about it."""

    code: str
    meaning: str
    action: str  # "recheck": re-read the state; "retry": outbox retry; "refuse"; "final"


# PS3.4 Table CC.1.1-2 and CC.2.6 statuses an Update Workitem can answer with.
UPS_STATUSES: dict[str, UpsStatus] = {
    s.code: s
    for s in (
        UpsStatus("C300", "the UPS is in a final state and may no longer be updated", "final"),
        UpsStatus("C301", "the correct Transaction UID was not provided", "recheck"),
        UpsStatus("C302", "the UPS is already IN PROGRESS", "recheck"),
        UpsStatus("C303", "the UPS may only become SCHEDULED via N-CREATE", "refuse"),
        UpsStatus("C304", "the final state requirements are not met", "refuse"),
        UpsStatus("C307", "the specified UPS instance does not exist", "retry"),
        UpsStatus("C310", "the UPS is not in the IN PROGRESS state", "refuse"),
        UpsStatus("C311", "the UPS is already COMPLETED", "final"),
        UpsStatus("0106", "invalid attribute value", "refuse"),
        UpsStatus("0122", "SOP Class not supported", "refuse"),
        UpsStatus("0124", "refused: not authorized", "refuse"),
        UpsStatus("A700", "refused: out of resources", "retry"),
        UpsStatus("C000", "error: cannot understand", "refuse"),
    )
}
_STATUS_IN_WARNING = re.compile(r"(?:\b0x|\b)([0-9A-Fa-f]{4})\b")


def status_of(reply: Reply) -> UpsStatus | None:
    """The DIMSE status carried in the Warning header (`299 <service>: 0xC301 ...`), if known."""
    text = reply.warning.split(":", 1)[-1]
    for candidate in _STATUS_IN_WARNING.findall(text):
        status = UPS_STATUSES.get(candidate.upper())
        if status is not None:
            return status
    return None


def _value(item: dict[str, Any], tag: str) -> str:
    values = item.get(tag, {}).get("Value") or [""]
    first = values[0]
    if isinstance(first, dict):  # PN
        return str(first.get("Alphabetic", ""))
    return str(first)


def priority_update(value: str) -> bytes:
    """The Update Workitem body: only ScheduledProcedureStepPriority."""
    document = {SCHEDULED_PROCEDURE_STEP_PRIORITY: {"vr": "CS", "Value": [value]}}
    return json.dumps(document).encode("utf-8")


class UpsRsWorklistUpdater:
    """Changes the priority of a study's UPS workitems on one UPS-RS service."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float,
        bearer_token: str = "",
        overrides: Mapping[Priority, str] | None = None,
    ) -> None:
        self._peer = HttpPeer(base_url, timeout=timeout, bearer_token=bearer_token)
        self._base = base_url.rstrip("/")
        self._overrides = dict(overrides or {})

    async def deliver(self, message: WorklistMessage) -> str:
        """Update every matching workitem; returns `uid=outcome` pairs for the audit record."""
        try:
            change = PriorityChange.from_json(message.payload)
        except InvalidInput as exc:
            raise DeliveryRefused(f"outbox {message.outbox_id}: {exc.message}") from exc
        target = self._overrides.get(change.priority) or codes_for(change.priority).ups
        workitems = await self.search_workitems(change)
        if not workitems:
            raise DeliveryFailed(
                f"no UPS workitem for accession {change.accession_number} / study "
                f"{change.study_instance_uid} at {self._base} yet"
            )
        wrong = [w for w in workitems if _value(w, PATIENT_ID) != change.patient_id]
        if wrong:
            raise DeliveryRefused(
                f"workitem {_value(wrong[0], SOP_INSTANCE_UID)} is for patient "
                f"{_value(wrong[0], PATIENT_ID)!r}, not {change.patient_id!r}; nothing changed"
            )
        outcomes = [await self._apply(item, target) for item in workitems]
        return ";".join(outcomes)

    async def search_workitems(self, change: PriorityChange) -> list[dict[str, Any]]:
        """QIDO on /workitems: by accession number, else by Study Instance UID (PS3.18 11.9)."""
        for key, value in (
            ("ReferencedRequestSequence.AccessionNumber", change.accession_number),
            ("ReferencedRequestSequence.StudyInstanceUID", change.study_instance_uid),
        ):
            reply = await self._peer.request(
                "GET",
                f"{self._base}/workitems",
                params={key: value},
                headers={"Accept": DICOM_JSON},
            )
            if reply.status == 204:
                continue
            if reply.status != 200:
                raise DeliveryRefused(f"UPS-RS search answered HTTP {reply.status} {reply.warning}")
            found = reply.json() or []
            if found:
                return list(found)
        return []

    async def _apply(self, item: dict[str, Any], target: str) -> str:
        uid = _value(item, SOP_INSTANCE_UID)
        if not uid:
            raise DeliveryRefused("UPS-RS search returned a workitem without SOPInstanceUID")
        for _ in range(2):  # a second pass after the state changed under us
            state = _value(item, PROCEDURE_STEP_STATE)
            if state in (COMPLETED, CANCELED):
                return f"{uid}={state.lower()}:unchanged"
            if state == IN_PROGRESS:
                return f"{uid}=in-progress:unchanged"
            if state != SCHEDULED:
                raise DeliveryRefused(f"workitem {uid} has unknown state {state!r}")
            if _value(item, SCHEDULED_PROCEDURE_STEP_PRIORITY) == target:
                return f"{uid}={target}:already"
            reply = await self._peer.request(
                "POST",
                f"{self._base}/workitems/{uid}",
                body=priority_update(target),
                headers={"Content-Type": DICOM_JSON},
            )
            if 200 <= reply.status < 300:
                return f"{uid}={target}"
            status = status_of(reply)
            action = status.action if status else _action_for_http(reply.status)
            if action == "final":
                return f"{uid}=final:unchanged"
            if action == "retry":
                raise DeliveryFailed(f"workitem {uid}: HTTP {reply.status} {reply.warning}")
            if action == "refuse":
                raise DeliveryRefused(f"workitem {uid}: HTTP {reply.status} {reply.warning}")
            item = await self._retrieve(uid)
        raise DeliveryFailed(f"workitem {uid} kept changing state; will try again")

    async def _retrieve(self, uid: str) -> dict[str, Any]:
        reply = await self._peer.request(
            "GET", f"{self._base}/workitems/{uid}", headers={"Accept": DICOM_JSON}
        )
        if reply.status == 404:
            raise DeliveryFailed(f"workitem {uid} disappeared (C307); searching again later")
        if reply.status != 200:
            raise DeliveryRefused(f"retrieve workitem {uid}: HTTP {reply.status}")
        document = reply.json()
        return dict(document[0] if isinstance(document, list) else document)

    async def aclose(self) -> None:
        """Close the HTTP session."""
        await self._peer.aclose()


def _action_for_http(status: int) -> str:
    # Without a recognisable DIMSE status: 404 is C307, 409 a state conflict, the rest refused.
    return {404: "retry", 409: "recheck"}.get(status, "refuse")
