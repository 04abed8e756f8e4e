"""FHIR Subscriptions R5 Backport IG for R4 (STU 1.1): Subscription input, notification Bundles and
`$status` Parameters (pure; no I/O).

One topic: review Tasks created or completed. Channel `rest-hook`; payload `application/fhir+json`
with content `id-only` (no PHI in the body) or `empty`; filters `Task?owner=<ref>` and
`Task?performer=<pool code>` (AND). Anything else is refused when the Subscription is created.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from fhir_mapping.r4 import Subscription, validate
from fhir_mapping.task import fhir_instant
from gateway.domain.errors import IncompleteAction, InvalidInput

BACKPORT = "http://hl7.org/fhir/uv/subscriptions-backport"
SUBSCRIPTION_PROFILE = f"{BACKPORT}/StructureDefinition/backport-subscription"
STATUS_PROFILE = f"{BACKPORT}/StructureDefinition/backport-subscription-status-r4"
FILTER_CRITERIA = f"{BACKPORT}/StructureDefinition/backport-filter-criteria"
PAYLOAD_CONTENT = f"{BACKPORT}/StructureDefinition/backport-payload-content"
HEARTBEAT_PERIOD = f"{BACKPORT}/StructureDefinition/backport-heartbeat-period"
TIMEOUT = f"{BACKPORT}/StructureDefinition/backport-timeout"
MAX_COUNT = f"{BACKPORT}/StructureDefinition/backport-max-count"
TOPIC_CANONICAL_EXT = (
    f"{BACKPORT}/StructureDefinition/capabilitystatement-subscriptiontopic-canonical"
)
SERVER_CAPABILITY = f"{BACKPORT}/CapabilityStatement/backport-subscription-server-r4"
TOPIC = "http://hitl-gateway.org/fhir/SubscriptionTopic/review-task"
TOPIC_EVENTS = ("created", "completed")
CONTENTS = frozenset({"id-only", "empty"})
FILTERS = frozenset({"owner", "performer"})
PAYLOAD_TYPE = "application/fhir+json"


@dataclass(frozen=True, slots=True)
class SubscriptionRequest:
    """A validated rest-hook Subscription to the review-task topic."""

    endpoint: str
    content: str
    filters: tuple[tuple[str, str], ...]
    headers: tuple[str, ...]
    heartbeat_seconds: int
    timeout_seconds: int
    max_count: int
    reason: str
    end: str = ""


def _extension(element: Mapping[str, Any] | None, url: str) -> Any:
    for ext in (element or {}).get("extension", []):
        if ext.get("url") == url:
            return next((v for k, v in ext.items() if k.startswith("value")), None)
    return None


def _filters(body: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    found: list[tuple[str, str]] = []
    for ext in body.get("_criteria", {}).get("extension", []):
        if ext.get("url") != FILTER_CRITERIA:
            continue
        text = str(ext.get("valueString", ""))
        resource, _, query = text.partition("?")
        if resource != "Task" or not query:
            raise IncompleteAction(f"filter {text!r}: only Task?owner=… / Task?performer=…",
                                   code="not-supported")  # fmt: skip
        for name, _, value in (pair.partition("=") for pair in query.split("&")):
            if name not in FILTERS or not value:
                raise IncompleteAction(f"filter parameter {name!r} is not supported",
                                       code="not-supported")  # fmt: skip
            found.append((name, value))
    return tuple(found)


def parse_subscription(body: Any) -> SubscriptionRequest:
    """Validate a Subscription create body; InvalidInput (400) or IncompleteAction (422)."""
    if not isinstance(body, Mapping) or body.get("resourceType") != "Subscription":
        raise InvalidInput("the body must be a FHIR Subscription resource")
    profiles = body.get("meta", {}).get("profile", [])
    if SUBSCRIPTION_PROFILE not in profiles:
        raise IncompleteAction(
            f"the Subscription must claim {SUBSCRIPTION_PROFILE}", code="required"
        )
    if body.get("criteria") != TOPIC:
        raise IncompleteAction(f"unsupported topic {body.get('criteria')!r}; supported: {TOPIC}",
                               code="not-supported")  # fmt: skip
    channel = body.get("channel", {})
    if channel.get("type") != "rest-hook":
        raise IncompleteAction("only the rest-hook channel is supported", code="not-supported")
    endpoint = str(channel.get("endpoint", ""))
    scheme, _, rest = endpoint.partition("://")
    if scheme not in {"http", "https"} or not rest.split("/", 1)[0]:
        raise IncompleteAction("channel.endpoint must be an http(s) URL", code="value")
    if channel.get("payload", PAYLOAD_TYPE) != PAYLOAD_TYPE:
        raise IncompleteAction(f"channel.payload must be {PAYLOAD_TYPE}", code="not-supported")
    content = _extension(channel.get("_payload"), PAYLOAD_CONTENT) or "id-only"
    if content not in CONTENTS:
        raise IncompleteAction(f"payload content {content!r} is not supported (id-only, empty)",
                               code="not-supported")  # fmt: skip
    headers = tuple(str(h) for h in channel.get("header", []))
    if any(":" not in h for h in headers):
        raise IncompleteAction("each channel.header must be 'Name: value'", code="value")
    heartbeat = int(_extension(channel, HEARTBEAT_PERIOD) or 0)
    timeout = int(_extension(channel, TIMEOUT) or 10)
    max_count = int(_extension(channel, MAX_COUNT) or 20)
    if heartbeat < 0 or timeout <= 0 or max_count <= 0:
        raise IncompleteAction("heartbeat, timeout and max-count must be positive", code="value")
    return SubscriptionRequest(
        endpoint=endpoint, content=str(content), filters=_filters(body), headers=headers,
        heartbeat_seconds=heartbeat, timeout_seconds=timeout, max_count=max_count,
        reason=str(body.get("reason") or "review Task notifications"), end=str(body.get("end", "")),
    )  # fmt: skip


def subscription_resource(
    subscription_id: str, request: SubscriptionRequest, status: str, error: str = ""
) -> dict[str, Any]:
    """The stored R4 Subscription (backport profile) in its current status."""
    channel: dict[str, Any] = {
        "type": "rest-hook",
        "endpoint": request.endpoint,
        "payload": PAYLOAD_TYPE,
        "_payload": {"extension": [{"url": PAYLOAD_CONTENT, "valueCode": request.content}]},
        "extension": [
            {"url": TIMEOUT, "valueUnsignedInt": request.timeout_seconds},
            {"url": MAX_COUNT, "valuePositiveInt": request.max_count},
        ],
    }
    if request.heartbeat_seconds:
        channel["extension"].insert(
            0, {"url": HEARTBEAT_PERIOD, "valueUnsignedInt": request.heartbeat_seconds}
        )
    if request.headers:
        channel["header"] = list(request.headers)
    resource: dict[str, Any] = {
        "resourceType": "Subscription",
        "id": subscription_id,
        "meta": {"profile": [SUBSCRIPTION_PROFILE]},
        "status": status,
        "reason": request.reason,
        "criteria": TOPIC,
        "channel": channel,
    }
    if request.filters:
        resource["_criteria"] = {
            "extension": [
                {"url": FILTER_CRITERIA, "valueString": f"Task?{name}={value}"}
                for name, value in request.filters
            ]
        }
    if request.end:
        resource["end"] = request.end
    if error:
        resource["error"] = error
    validate(Subscription, resource)
    return resource


@dataclass(frozen=True, slots=True)
class NotificationEvent:
    """One numbered event of a subscription: a review Task created or completed."""

    number: int
    timestamp: datetime
    focus: str  # e.g. Task/123


def status_parameters(
    *,
    base: str,
    subscription_id: str,
    status: str,
    kind: str,
    events_since_start: int,
    events: Sequence[NotificationEvent] = (),
    content: str = "id-only",
    error: str = "",
) -> dict[str, Any]:
    """The backport-subscription-status-r4 Parameters (notification entry[0] and `$status`)."""
    parameters: list[dict[str, Any]] = [
        {"name": "subscription",
         "valueReference": {"reference": f"{base}/Subscription/{subscription_id}"}},
        {"name": "topic", "valueCanonical": TOPIC},
        {"name": "status", "valueCode": status},
        {"name": "type", "valueCode": kind},
        {"name": "events-since-subscription-start", "valueString": str(events_since_start)},
    ]  # fmt: skip
    for event in events:
        parts: list[dict[str, Any]] = [
            {"name": "event-number", "valueString": str(event.number)},
            {"name": "timestamp", "valueInstant": fhir_instant(event.timestamp)},
        ]
        if content != "empty":
            parts.append({"name": "focus", "valueReference": {"reference": event.focus}})
        parameters.append({"name": "notification-event", "part": parts})
    if error:
        parameters.append({"name": "error", "valueCodeableConcept": {"text": error}})
    return {
        "resourceType": "Parameters",
        "id": str(uuid.uuid4()),
        "meta": {"profile": [STATUS_PROFILE]},
        "parameter": parameters,
    }


def notification_bundle(
    *,
    base: str,
    subscription_id: str,
    status: str,
    kind: str,
    events_since_start: int,
    when: datetime,
    events: Sequence[NotificationEvent] = (),
    content: str = "id-only",
) -> dict[str, Any]:
    """A history Bundle: the status Parameters, then (id-only) one entry per focus, no resource."""
    parameters = status_parameters(
        base=base, subscription_id=subscription_id, status=status, kind=kind,
        events_since_start=events_since_start, events=events, content=content,
    )  # fmt: skip
    entries: list[dict[str, Any]] = [
        {
            "fullUrl": f"urn:uuid:{parameters['id']}",
            "resource": parameters,
            "request": {"method": "GET", "url": f"Subscription/{subscription_id}/$status"},
            "response": {"status": "200"},
        }
    ]
    if content == "id-only":
        for focus in dict.fromkeys(e.focus for e in events):
            entries.append(
                {
                    "fullUrl": f"{base}/{focus}",
                    "request": {"method": "PUT", "url": focus},
                    "response": {"status": "200"},
                }
            )
    return {
        "resourceType": "Bundle",
        "id": str(uuid.uuid4()),
        "type": "history",
        "timestamp": fhir_instant(when),
        "entry": entries,
    }
