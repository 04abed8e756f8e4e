"""UPS-RS write-back against a peer enforcing PS3.4 Annex CC, for every priority mapping row."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime

import aiohttp
import pytest

from adapters.worklist.ups_rs import UpsRsWorklistUpdater
from gateway.domain.errors import DeliveryFailed, DeliveryRefused
from gateway.domain.priority import PRIORITY_TABLE, Priority
from gateway.domain.worklist import PRIORITY_CHANGE_KIND, PriorityChange
from gateway.ports import WorklistMessage
from tests.peers.ups_rs_server import DICOM_JSON, UpsRsServer

pytestmark = pytest.mark.integration

STUDY = "1.2.826.0.1.3680043.8.498.61"
WHEN = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


@pytest.fixture
def ups() -> Iterator[UpsRsServer]:
    """The worklist manager's UPS-RS service on 127.0.0.1."""
    server = UpsRsServer().start()
    yield server
    server.stop()


def _message(
    priority: Priority, *, accession: str = "ACC-61", patient: str = "PAT-61"
) -> WorklistMessage:
    change = PriorityChange(
        idempotency_key=f"task-1:{priority.rank + 2}",
        study_instance_uid=STUDY,
        accession_number=accession,
        patient_id=patient,
        priority=priority,
        requested_at=WHEN,
    )
    return WorklistMessage(1, change.idempotency_key, "ups", PRIORITY_CHANGE_KIND, change.to_json())


async def _deliver(ups: UpsRsServer, message: WorklistMessage) -> str:
    updater = UpsRsWorklistUpdater(ups.url, timeout=5)
    try:
        return await updater.deliver(message)
    finally:
        await updater.aclose()


@pytest.mark.parametrize("priority", list(Priority))
async def test_scheduled_workitem_gets_the_mapped_priority(
    ups: UpsRsServer, priority: Priority
) -> None:
    ups.add_workitem(
        "1.2.3.1", patient_id="PAT-61", accession="ACC-61", study_uid=STUDY, priority="LOW"
    )
    ups.add_workitem(
        "1.2.3.2", patient_id="PAT-99", accession="ACC-99", study_uid="1.2.9", priority="LOW"
    )

    ack = await _deliver(ups, _message(priority))

    target = PRIORITY_TABLE[priority].ups
    assert ack == f"1.2.3.1={target}"
    assert ups.state_of("1.2.3.1") == ("SCHEDULED", target)
    assert ups.state_of("1.2.3.2") == ("SCHEDULED", "LOW")  # another accession, untouched
    ((uid, body),) = ups.updates
    assert uid == "1.2.3.1"
    assert body == {"00741200": {"vr": "CS", "Value": [target]}}


async def test_the_study_uid_finds_the_workitem_when_the_accession_does_not(
    ups: UpsRsServer,
) -> None:
    ups.add_workitem("1.2.3.1", patient_id="PAT-61", accession="RIS-OTHER", study_uid=STUDY)
    assert await _deliver(ups, _message(Priority.STAT)) == "1.2.3.1=HIGH"


async def test_an_unchanged_priority_is_not_written_again(ups: UpsRsServer) -> None:
    ups.add_workitem(
        "1.2.3.1", patient_id="PAT-61", accession="ACC-61", study_uid=STUDY, priority="HIGH"
    )
    assert await _deliver(ups, _message(Priority.STAT)) == "1.2.3.1=HIGH:already"
    assert ups.updates == []


async def _put_state(
    ups: UpsRsServer, uid: str, state: str, transaction: str
) -> aiohttp.ClientResponse:
    body = {"00741000": {"vr": "CS", "Value": [state]}}
    if transaction:
        body["00081195"] = {"vr": "UI", "Value": [transaction]}
    async with (
        aiohttp.ClientSession() as session,
        session.put(
            f"{ups.url}/workitems/{uid}/state",
            data=json.dumps(body),
            headers={"Content-Type": DICOM_JSON},
        ) as response,
    ):
        await response.read()
        return response


async def test_in_progress_workitem_is_left_to_its_performer(ups: UpsRsServer) -> None:
    ups.add_workitem("1.2.3.1", patient_id="PAT-61", accession="ACC-61", study_uid=STUDY)
    claimed = await _put_state(ups, "1.2.3.1", "IN PROGRESS", "2.25.777")
    assert claimed.status == 200

    assert await _deliver(ups, _message(Priority.STAT)) == "1.2.3.1=in-progress:unchanged"
    assert ups.state_of("1.2.3.1") == ("IN PROGRESS", "MEDIUM")

    # The peer enforces CC.1.1: without the performer's Transaction UID nothing changes ...
    async with aiohttp.ClientSession() as session:
        body = json.dumps({"00741200": {"vr": "CS", "Value": ["HIGH"]}})
        headers = {"Content-Type": DICOM_JSON}
        async with session.post(f"{ups.url}/workitems/1.2.3.1", data=body, headers=headers) as r:
            assert (r.status, r.headers["Warning"][:18]) == (409, "299 ups-rs: 0xC301")
        # ... and with it the performer may.
        url = f"{ups.url}/workitems/1.2.3.1?transaction=2.25.777"
        async with session.post(url, data=body, headers=headers) as r:
            assert r.status == 200


async def test_a_claim_racing_the_update_is_rechecked_not_forced(ups: UpsRsServer) -> None:
    ups.add_workitem("1.2.3.1", patient_id="PAT-61", accession="ACC-61", study_uid=STUDY)
    ups.claim_before_update = "2.25.888"  # C301 answers the update; a re-read shows IN PROGRESS

    assert await _deliver(ups, _message(Priority.ASAP)) == "1.2.3.1=in-progress:unchanged"
    assert ups.state_of("1.2.3.1") == ("IN PROGRESS", "MEDIUM")


@pytest.mark.parametrize("final", ["COMPLETED", "CANCELED"])
async def test_final_workitems_are_not_touched(ups: UpsRsServer, final: str) -> None:
    ups.add_workitem("1.2.3.1", patient_id="PAT-61", accession="ACC-61", study_uid=STUDY)
    ups.workitems["1.2.3.1"]["00741216"] = {"vr": "SQ", "Value": [{}]}
    assert (await _put_state(ups, "1.2.3.1", "IN PROGRESS", "2.25.1")).status == 200
    assert (await _put_state(ups, "1.2.3.1", final, "2.25.1")).status == 200

    assert await _deliver(ups, _message(Priority.STAT)) == f"1.2.3.1={final.lower()}:unchanged"
    assert ups.updates == []


async def test_no_workitem_yet_is_retried(ups: UpsRsServer) -> None:
    with pytest.raises(DeliveryFailed, match="no UPS workitem"):
        await _deliver(ups, _message(Priority.STAT))


async def test_a_workitem_of_another_patient_is_refused(ups: UpsRsServer) -> None:
    ups.add_workitem("1.2.3.1", patient_id="SOMEONE", accession="ACC-61", study_uid=STUDY)
    with pytest.raises(DeliveryRefused, match="SOMEONE"):
        await _deliver(ups, _message(Priority.STAT))
    assert ups.state_of("1.2.3.1") == ("SCHEDULED", "MEDIUM")


async def test_a_service_that_is_down_is_a_transient_failure() -> None:
    from tests.conftest import free_port

    updater = UpsRsWorklistUpdater(f"http://127.0.0.1:{free_port()}", timeout=2)
    with pytest.raises(DeliveryFailed):
        await updater.deliver(_message(Priority.STAT))
    await updater.aclose()


async def test_a_destination_override_picks_low_for_routine(ups: UpsRsServer) -> None:
    ups.add_workitem("1.2.3.1", patient_id="PAT-61", accession="ACC-61", study_uid=STUDY)
    updater = UpsRsWorklistUpdater(ups.url, timeout=5, overrides={Priority.ROUTINE: "LOW"})
    assert await updater.deliver(_message(Priority.ROUTINE)) == "1.2.3.1=LOW"
    await updater.aclose()
    assert ups.state_of("1.2.3.1") == ("SCHEDULED", "LOW")
