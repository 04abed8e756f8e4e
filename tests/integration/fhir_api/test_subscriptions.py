"""standards.md §8 "Subscriptions": R4 backport rest-hook subscriptions to the review-task topic,
delivered to a real HTTP receiver on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
from aiohttp import web

from fhir_mapping import subscriptions as sub
from gateway.subscriptions import SubscriptionNotifier
from tests.conftest import free_port
from tests.integration.fhir_api.conftest import FHIR_JSON, FhirGateway
from tests.unit.fhir.samples import decision_body, score, study

pytestmark = pytest.mark.integration


@dataclass
class Receiver:
    url: str
    received: list[tuple[dict[str, str], dict[str, Any]]] = field(default_factory=list)
    answer: int = 200

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [b for _, b in self.received if _param(b, "type") == kind]


def _param(bundle: dict[str, Any], name: str) -> Any:
    for p in bundle["entry"][0]["resource"]["parameter"]:
        if p["name"] == name:
            return next((v for k, v in p.items() if k.startswith("value")), p.get("part"))
    return None


def _events(bundle: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for p in bundle["entry"][0]["resource"]["parameter"]:
        if p["name"] == "notification-event":
            out.append({q["name"]: next(v for k, v in q.items() if k.startswith("value"))
                        for q in p["part"]})  # fmt: skip
    return out


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    port = free_port()
    state = Receiver(f"http://127.0.0.1:{port}/hook")

    async def hook(request: web.Request) -> web.Response:
        state.received.append((dict(request.headers), json.loads(await request.text())))
        return web.Response(status=state.answer)

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield state
    await runner.cleanup()


def _body(endpoint: str, *filters: str, content: str = "id-only", **extra: Any) -> dict[str, Any]:
    channel: dict[str, Any] = {
        "type": "rest-hook", "endpoint": endpoint, "payload": sub.PAYLOAD_TYPE,
        "_payload": {"extension": [{"url": sub.PAYLOAD_CONTENT, "valueCode": content}]},
        "header": ["Authorization: Bearer subscriber-secret"],
        "extension": [{"url": sub.HEARTBEAT_PERIOD, "valueUnsignedInt": 60}],
    }  # fmt: skip
    body: dict[str, Any] = {
        "resourceType": "Subscription", "meta": {"profile": [sub.SUBSCRIPTION_PROFILE]},
        "status": "requested", "reason": "my worklist", "criteria": sub.TOPIC, "channel": channel,
    }  # fmt: skip
    if filters:
        body["_criteria"] = {"extension": [{"url": sub.FILTER_CRITERIA, "valueString": f}
                                           for f in filters]}  # fmt: skip
    body.update(extra)
    return body


async def _subscribe(fhir: FhirGateway, body: dict[str, Any], status: int = 201) -> dict[str, Any]:
    response = await fhir.client.post("/fhir/Subscription", json=body, headers=fhir.auth())
    assert response.status == status, await response.text()
    document: dict[str, Any] = await response.json(content_type=FHIR_JSON)
    return document


async def _round(notifier: SubscriptionNotifier) -> None:
    await asyncio.to_thread(notifier.collect)
    await asyncio.to_thread(notifier.deliver)


async def test_subscription_claims_the_backport_profile_topic_and_payload_content(
    fhir: FhirGateway, receiver: Receiver
) -> None:
    created = await _subscribe(fhir, _body(receiver.url, "Task?performer=reviewer"))
    assert created["meta"]["profile"] == [sub.SUBSCRIPTION_PROFILE]
    assert created["criteria"] == sub.TOPIC
    assert created["status"] == "requested"
    content = created["channel"]["_payload"]["extension"][0]["valueCode"]
    assert content in {"empty", "id-only", "full-resource"}
    metadata = await fhir.get("metadata")
    assert sub.SERVER_CAPABILITY in metadata["instantiates"]
    entry = next(r for r in metadata["rest"][0]["resource"] if r["type"] == "Subscription")
    assert entry["supportedProfile"] == [sub.SUBSCRIPTION_PROFILE]


@pytest.mark.parametrize(
    "change",
    [
        {"criteria": "http://example.org/SubscriptionTopic/other"},
        {"channel": {"type": "websocket", "endpoint": "http://127.0.0.1:1/x"}},
        {"meta": {}},
        "full-resource",
        "Task?status=completed",
    ],
)
async def test_unsupported_topic_channel_content_or_filter_is_rejected_at_create(
    fhir: FhirGateway, receiver: Receiver, change: Any
) -> None:
    if change == "full-resource":
        body = _body(receiver.url, content="full-resource")
    elif isinstance(change, str):
        body = _body(receiver.url, change)
    else:
        body = {**_body(receiver.url), **change}
    await _subscribe(fhir, body, status=422)
    assert (await fhir.get("Subscription"))["total"] == 0


async def test_rest_hook_handshake_activates_and_a_failed_handshake_is_error(
    fhir: FhirGateway, receiver: Receiver
) -> None:
    notifier = SubscriptionNotifier(fhir.engine, fhir.settings)
    created = await _subscribe(fhir, _body(receiver.url))
    await _round(notifier)
    handshake = receiver.of_type("handshake")
    assert len(handshake) == 1
    assert _param(handshake[0], "status") == "requested"
    assert (await fhir.get(f"Subscription/{created['id']}"))["status"] == "active"
    receiver.answer = 500
    failing = await _subscribe(fhir, _body(receiver.url))
    await _round(notifier)
    assert (await fhir.get(f"Subscription/{failing['id']}"))["status"] == "error"
    status = await fhir.get(f"Subscription/{failing['id']}/$status")
    assert status["meta"]["profile"] == [sub.STATUS_PROFILE]
    assert {p["name"]: p.get("valueCode") for p in status["parameter"]}["status"] == "error"


async def test_completing_a_task_sends_one_event_notification_per_matching_subscription(
    fhir: FhirGateway, receiver: Receiver
) -> None:
    notifier = SubscriptionNotifier(fhir.engine, fhir.settings)
    mine = await _subscribe(fhir, _body(receiver.url, "Task?owner=Practitioner/dr-1"))
    other = await _subscribe(fhir, _body(receiver.url, "Task?owner=Practitioner/dr-2"))
    await _round(notifier)
    receiver.received.clear()
    task, etag = await fhir.read_task()
    assert (await fhir.put_task(decision_body(task), etag)).status == 200
    await _round(notifier)
    await _round(notifier)  # a second round re-delivers nothing
    notes = receiver.of_type("event-notification")
    assert len(notes) == 1
    bundle = notes[0]
    assert bundle["type"] == "history"
    params = bundle["entry"][0]["resource"]
    assert params["meta"]["profile"] == [sub.STATUS_PROFILE]
    assert _param(bundle, "subscription")["reference"].endswith(f"Subscription/{mine['id']}")
    assert _param(bundle, "status") == "active"
    assert _param(bundle, "events-since-subscription-start") == "1"
    events = _events(bundle)
    assert [e["event-number"] for e in events] == ["1"]
    assert events[0]["focus"] == {"reference": f"Task/{fhir.task_id}"}
    assert (await fhir.get(f"Subscription/{other['id']}/$status"))["parameter"][4][
        "valueString"
    ] == "0"


async def test_post_uses_the_payload_type_and_channel_headers_and_id_only_carries_no_phi(
    fhir: FhirGateway, receiver: Receiver
) -> None:
    notifier = SubscriptionNotifier(fhir.engine, fhir.settings)
    await _subscribe(fhir, _body(receiver.url))
    await _round(notifier)
    with fhir.engine.begin() as conn:
        other = replace(study(), study_instance_uid="1.2.3.8")
        fhir.review.create_review_task(conn, other, replace(score(), study_instance_uid="1.2.3.8"))
    await _round(notifier)
    headers, bundle = receiver.received[-1]
    assert headers["Content-Type"] == sub.PAYLOAD_TYPE
    assert headers["Authorization"] == "Bearer subscriber-secret"
    text = json.dumps(bundle)
    assert "pat-1" not in text
    assert "Doe" not in text
    assert all("resource" not in e for e in bundle["entry"][1:])
    assert bundle["entry"][1]["request"]["url"].startswith("Task/")


async def test_events_in_one_window_are_batched_and_heartbeats_follow_the_period(
    fhir: FhirGateway, receiver: Receiver
) -> None:
    from datetime import UTC, datetime, timedelta

    clock = {"now": datetime.now(UTC)}
    notifier = SubscriptionNotifier(fhir.engine, fhir.settings, clock=lambda: clock["now"])
    created = await _subscribe(fhir, _body(receiver.url, "Task?performer=reviewer"))
    await _round(notifier)
    with fhir.engine.begin() as conn:
        for n in (1, 2):
            uid = f"1.2.3.9.{n}"
            fhir.review.create_review_task(
                conn, replace(study(), study_instance_uid=uid),
                replace(score(), study_instance_uid=uid),
            )  # fmt: skip
    await _round(notifier)
    notes = receiver.of_type("event-notification")
    assert len(notes) == 1
    assert [e["event-number"] for e in _events(notes[0])] == ["1", "2"]
    await _round(notifier)
    assert receiver.of_type("heartbeat") == []
    clock["now"] += timedelta(seconds=61)
    await _round(notifier)
    assert len(receiver.of_type("heartbeat")) == 1
    status = await fhir.get(f"Subscription/{created['id']}/$status")
    values = {p["name"]: next((v for k, v in p.items() if k.startswith("value")), None)
              for p in status["parameter"]}  # fmt: skip
    assert values["status"] == "active"
    assert values["type"] == "query-status"
    assert values["events-since-subscription-start"] == "2"
    # A client that missed a notification recovers with a _lastUpdated poll.
    recovered = await fhir.get("Task?_lastUpdated=ge2020-01-01&performer=reviewer")
    assert recovered["total"] == 3


async def test_delete_turns_a_subscription_off_and_others_cannot_see_it(
    fhir: FhirGateway, receiver: Receiver
) -> None:
    created = await _subscribe(fhir, _body(receiver.url))
    stranger = fhir.token(user="Practitioner/dr-2")
    await fhir.get(f"Subscription/{created['id']}", stranger, status=404)
    response = await fhir.client.delete(f"/fhir/Subscription/{created['id']}", headers=fhir.auth())
    assert response.status == 204
    assert (await fhir.get(f"Subscription/{created['id']}"))["status"] == "off"
