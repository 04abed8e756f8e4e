"""ServiceRequest.priority with If-Match against an EHR peer, and the signed webhook."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from adapters.worklist.fhir_service_request import FhirServiceRequestUpdater
from adapters.worklist.webhook import WebhookWorklistUpdater
from gateway.domain.errors import DeliveryFailed, DeliveryRefused
from gateway.domain.priority import PRIORITY_TABLE, Priority
from gateway.domain.worklist import PRIORITY_CHANGE_KIND, PriorityChange
from gateway.ports import WorklistMessage
from tests.peers.fhir_server import FhirServer
from tests.peers.webhook_receiver import WebhookReceiver

pytestmark = pytest.mark.integration

SYSTEM = "urn:oid:1.2.3.4.5.6"
SECRET = "s3cret-key"


@pytest.fixture
def ehr() -> Iterator[FhirServer]:
    """The EHR's FHIR server on 127.0.0.1."""
    server = FhirServer().start()
    yield server
    server.stop()


@pytest.fixture
def vendor() -> Iterator[WebhookReceiver]:
    """A vendor worklist API that checks signatures."""
    server = WebhookReceiver(SECRET).start()
    yield server
    server.stop()


def _message(priority: Priority, accession: str = "ACC-71") -> WorklistMessage:
    change = PriorityChange(
        idempotency_key=f"task-7:{priority.rank + 2}",
        study_instance_uid="1.2.826.0.1.3680043.8.498.71",
        accession_number=accession,
        patient_id="PAT-71",
        patient_name="Doe^Jane",
        encounter_id="enc-71",
        priority=priority,
        requested_at=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
    )
    return WorklistMessage(7, change.idempotency_key, "x", PRIORITY_CHANGE_KIND, change.to_json())


def _fhir(ehr: FhirServer) -> FhirServiceRequestUpdater:
    return FhirServiceRequestUpdater(ehr.url, timeout=5, accession_system=SYSTEM)


@pytest.mark.parametrize("priority", list(Priority))
async def test_service_request_priority_is_updated_with_if_match(
    ehr: FhirServer, priority: Priority
) -> None:
    start = "stat" if priority is Priority.ROUTINE else "routine"
    ehr.add_order("sr-1", accession="ACC-71", patient_id="PAT-71", priority=start)
    ehr.add_order("sr-2", accession="ACC-99", patient_id="PAT-99", priority=start)
    updater = _fhir(ehr)

    ack = await updater.deliver(_message(priority))
    await updater.aclose()

    assert ack == f"sr-1={priority.value}@2"
    (updated,) = ehr.updates
    assert updated["priority"] == PRIORITY_TABLE[priority].fhir.value
    assert updated["identifier"][0]["value"] == "ACC-71"
    assert updated["subject"]["identifier"]["value"] == "PAT-71"
    assert ehr.orders["sr-2"]["priority"] == start
    assert ehr.refused == []


async def test_a_concurrent_edit_answers_412_and_is_read_again(ehr: FhirServer) -> None:
    ehr.add_order("sr-1", accession="ACC-71", patient_id="PAT-71")
    ehr.interfere(2)
    updater = _fhir(ehr)

    # Versions 2 and 3 were written by someone else between our reads and updates.
    assert await updater.deliver(_message(Priority.STAT)) == "sr-1=stat@4"
    assert ehr.refused == [412, 412]

    ehr.orders["sr-1"]["priority"] = "routine"
    ehr.interfere(10)
    with pytest.raises(DeliveryFailed, match="412"):
        await updater.deliver(_message(Priority.STAT))
    await updater.aclose()


async def test_inactive_orders_and_other_patients(ehr: FhirServer) -> None:
    ehr.add_order("sr-1", accession="ACC-71", patient_id="PAT-71", status="completed")
    updater = _fhir(ehr)
    assert await updater.deliver(_message(Priority.STAT)) == "sr-1=completed:unchanged"
    ehr.add_order("sr-2", accession="ACC-72", patient_id="SOMEONE")
    with pytest.raises(DeliveryRefused, match="SOMEONE"):
        await updater.deliver(_message(Priority.STAT, accession="ACC-72"))
    with pytest.raises(DeliveryFailed, match="no ServiceRequest"):
        await updater.deliver(_message(Priority.STAT, accession="ACC-NONE"))
    assert ehr.updates == []
    await updater.aclose()


async def test_encounter_is_resolved_by_accession(ehr: FhirServer) -> None:
    ehr.add_order("sr-1", accession="ACC-71", patient_id="PAT-71", encounter="enc-9")
    ehr.add_order("sr-2", accession="ACC-72", patient_id="PAT-72")
    updater = _fhir(ehr)
    assert await updater.encounter_for_accession("ACC-71") == "enc-9"
    assert await updater.encounter_for_accession("ACC-72") == ""
    assert await updater.encounter_for_accession("ACC-NONE") == ""
    await updater.aclose()


@pytest.mark.parametrize("priority", list(Priority))
async def test_webhook_posts_a_signed_document(vendor: WebhookReceiver, priority: Priority) -> None:
    updater = WebhookWorklistUpdater(vendor.url + "/", SECRET, timeout=5)
    assert await updater.deliver(_message(priority)) == "wh-1"
    await updater.aclose()

    (document,) = vendor.received
    codes = PRIORITY_TABLE[priority]
    assert (document["accession_number"], document["patient_id"]) == ("ACC-71", "PAT-71")
    assert document["priority"] == priority.value
    assert document["codes"] == {
        "fhir": codes.fhir.value,
        "hl7_0485": codes.hl7_0485,
        "hl7_0027": codes.hl7_0027,
        "dicom_ups": codes.ups,
    }
    assert vendor.keys == [f"task-7:{priority.rank + 2}"]


async def test_webhook_with_a_wrong_secret_is_refused(vendor: WebhookReceiver) -> None:
    updater = WebhookWorklistUpdater(vendor.url + "/", "not-the-secret", timeout=5)
    with pytest.raises(DeliveryRefused, match="401"):
        await updater.deliver(_message(Priority.STAT))
    assert (vendor.rejected, vendor.received) == (1, [])
    vendor.status = 503
    good = WebhookWorklistUpdater(vendor.url + "/", SECRET, timeout=5)
    with pytest.raises(DeliveryFailed, match="503"):
        await good.deliver(_message(Priority.STAT))
    await updater.aclose()
    await good.aclose()
