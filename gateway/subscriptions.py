"""FHIR Subscriptions (R4 backport, rest-hook): the store and the notifier.

The event source is the audit trail: review Tasks created (`review-requested` create,
`secondary-review-requested`, `review-escalated`) and completed (`decision-recorded` of a
completion). The notifier reads the AuditEvents appended since its cursor, numbers one event per
matching subscription in the same transaction as the cursor moves (so each event is numbered
exactly once, whatever the restarts), and every `review.notification_batch_seconds` posts one
Bundle per subscription with the events of that window. New subscriptions get a handshake first
(`requested` → `active` on 2xx, `error` otherwise); idle ones a heartbeat. Every attempt is audited.
"""

from __future__ import annotations

import asyncio
import json
import logging
import urllib.request
import uuid
from collections.abc import Callable, Mapping
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, func, insert, select, update

from fhir_mapping.audit_event import details_of
from fhir_mapping.review_tasks import task_pool
from fhir_mapping.subscriptions import (
    PAYLOAD_TYPE,
    TOPIC,
    NotificationEvent,
    SubscriptionRequest,
    notification_bundle,
    parse_subscription,
    subscription_resource,
)
from gateway.audit.trail import record_event
from gateway.domain.errors import NotFound
from gateway.domain.model import Actor
from gateway.persistence.tables import (
    audit_log,
    subscription_cursor,
    subscription_events,
    subscriptions,
    task_history,
)
from gateway.pipeline import Event, PipelineEvent
from gateway.settings import Settings

log = logging.getLogger(__name__)
GATEWAY = Actor(reference="Device/hitl-gateway", display="hitl-gateway")
LIVE = ("requested", "active", "error")
CREATED_EVENTS = frozenset({"secondary-review-requested", "review-escalated"})
Post = Callable[[str, bytes, Mapping[str, str], float], int]


def _utcnow() -> datetime:
    return datetime.now(UTC)


def http_post(url: str, body: bytes, headers: Mapping[str, str], timeout: float) -> int:
    """POST to a subscriber's configured endpoint; the HTTP status (OSError when unreachable)."""
    request = urllib.request.Request(url, data=body, headers=dict(headers), method="POST")  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def _request_of(row: Any) -> SubscriptionRequest:
    data = json.loads(row.request)
    data["filters"] = tuple(tuple(f) for f in data["filters"])
    data["headers"] = tuple(data["headers"])
    return SubscriptionRequest(**data)


def resource_of(row: Any) -> dict[str, Any]:
    """The R4 Subscription of a stored row."""
    return subscription_resource(row.id, _request_of(row), row.status, row.error)


def create(conn: Connection, body: Any, created_by: str, now: datetime) -> dict[str, Any]:
    """Store a validated Subscription as `requested` (audited); the notifier sends the handshake."""
    request = parse_subscription(body)
    subscription_id = str(uuid.uuid4())
    conn.execute(
        insert(subscriptions).values(
            id=subscription_id, status="requested", request=json.dumps(asdict(request)),
            created_by=created_by, events_since_start=0, error="", created_at=now,
        )
    )  # fmt: skip
    _audit(
        conn, subscription_id, "requested", now, Actor(reference=created_by or GATEWAY.reference)
    )
    return subscription_resource(subscription_id, request, "requested")


def read(conn: Connection, subscription_id: str) -> Any:
    """The stored row; NotFound when absent."""
    row = conn.execute(select(subscriptions).where(subscriptions.c.id == subscription_id)).first()
    if row is None:
        raise NotFound(f"Subscription/{subscription_id} is not known")
    return row


def set_status(
    conn: Connection,
    subscription_id: str,
    status: str,
    now: datetime,
    actor: Actor,
    error: str = "",
) -> None:
    """Change a subscription's status (audited)."""
    conn.execute(
        update(subscriptions).where(subscriptions.c.id == subscription_id)
        .values(status=status, error=error)
    )  # fmt: skip
    _audit(conn, subscription_id, status, now, actor, error)


def _audit(
    conn: Connection,
    subscription_id: str,
    status: str,
    now: datetime,
    actor: Actor,
    error: str = "",
) -> None:
    record_event(
        conn,
        PipelineEvent(
            kind=Event.SUBSCRIPTION_CHANGED, actor=actor, occurred_at=now,
            outcome="0" if status != "error" else "8", outcome_desc=error[:500],
            entities=(f"Subscription/{subscription_id}",), detail={"status": status},
        ),
    )  # fmt: skip


def _topic_event(resource: Mapping[str, Any]) -> tuple[str, str] | None:
    """(created|completed, Task/<id>/_history/<v>) of an AuditEvent, or None."""
    kind = details_of(resource).get("pipeline-event", "")
    subtype = next((s.get("code") for s in resource.get("subtype", [])), "")
    if (kind == "review-requested" and subtype == "create") or kind in CREATED_EVENTS:
        topic_event = "created"
    elif kind == "decision-recorded":
        topic_event = "completed"
    else:
        return None
    for entity in resource.get("entity", []):
        reference = str(entity.get("what", {}).get("reference", ""))
        if reference.startswith("Task/") and "/_history/" in reference:
            return topic_event, reference
    return None


def _matches(request: SubscriptionRequest, task: Mapping[str, Any]) -> bool:
    for name, value in request.filters:
        if name == "owner" and task.get("owner", {}).get("reference") != value:
            return False
        if name == "performer" and task_pool(task) != value:
            return False
    return True


class SubscriptionNotifier:
    """Numbers topic events per subscription and delivers handshakes, events and heartbeats."""

    def __init__(
        self,
        engine: Engine,
        settings: Settings,
        post: Post = http_post,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        self._engine = engine
        self._settings = settings
        self._post = post
        self._clock = clock

    def collect(self, batch: int = 1000) -> int:
        """Number the topic events appended to the audit trail since the cursor."""
        with self._engine.begin() as conn:
            # A no-op UPDATE takes the row lock: replicas collecting at once queue up here.
            cursor = conn.execute(
                update(subscription_cursor)
                .where(subscription_cursor.c.id == 1)
                .values(audit_seq=subscription_cursor.c.audit_seq)
                .returning(subscription_cursor.c.audit_seq)
            ).scalar()
            if cursor is None:
                # First round: with no subscription yet, nothing before now can concern anyone.
                anyone = conn.execute(select(func.count()).select_from(subscriptions)).scalar()
                last = conn.execute(select(func.max(audit_log.c.seq))).scalar() or 0
                cursor = 0 if anyone else int(last)
                conn.execute(insert(subscription_cursor).values(id=1, audit_seq=cursor))
            rows = conn.execute(
                select(audit_log.c.seq, audit_log.c.resource, audit_log.c.recorded)
                .where(audit_log.c.seq > cursor, audit_log.c.resource_type == "AuditEvent")
                .order_by(audit_log.c.seq).limit(batch)
            ).all()  # fmt: skip
            if not rows:
                return 0
            subs = conn.execute(select(subscriptions).where(subscriptions.c.status.in_(LIVE))).all()
            numbered = 0
            for row in rows:
                found = _topic_event(json.loads(row.resource))
                if found is None or not subs:
                    continue
                topic_event, versioned = found
                task_id, _, version = versioned.removeprefix("Task/").partition("/_history/")
                text = conn.execute(
                    select(task_history.c.resource).where(
                        task_history.c.task_id == task_id, task_history.c.version_id == int(version)
                    )
                ).scalar_one_or_none()
                task = json.loads(text) if text else {}
                for sub in subs:
                    if row.recorded < sub.created_at or not _matches(_request_of(sub), task):
                        continue
                    number = conn.execute(
                        update(subscriptions).where(subscriptions.c.id == sub.id)
                        .values(events_since_start=subscriptions.c.events_since_start + 1)
                        .returning(subscriptions.c.events_since_start)
                    ).scalar_one()  # fmt: skip
                    conn.execute(
                        insert(subscription_events).values(
                            subscription_id=sub.id, event_number=number, focus=f"Task/{task_id}",
                            topic_event=topic_event, occurred_at=row.recorded,
                        )
                    )  # fmt: skip
                    numbered += 1
            conn.execute(
                update(subscription_cursor).where(subscription_cursor.c.id == 1)
                .values(audit_seq=rows[-1].seq)
            )  # fmt: skip
            return numbered

    def deliver(self) -> None:
        """Handshakes for new subscriptions, pending events, heartbeats for idle ones."""
        with self._engine.connect() as conn:
            subs = conn.execute(select(subscriptions).where(subscriptions.c.status.in_(LIVE))).all()
        for sub in subs:
            if sub.status == "requested":
                self._send(sub, "handshake", [])
                continue
            with self._engine.connect() as conn:
                pending = conn.execute(
                    select(subscription_events)
                    .where(subscription_events.c.subscription_id == sub.id,
                           subscription_events.c.sent_at.is_(None))
                    .order_by(subscription_events.c.event_number)
                    .limit(_request_of(sub).max_count)
                ).all()  # fmt: skip
            events = [NotificationEvent(p.event_number, p.occurred_at, p.focus) for p in pending]
            if events:
                self._send(sub, "event-notification", events)
            elif sub.status == "active" and self._heartbeat_due(sub):
                self._send(sub, "heartbeat", [])

    def _heartbeat_due(self, sub: Any) -> bool:
        period = _request_of(sub).heartbeat_seconds
        last = sub.last_sent_at or sub.created_at
        return bool(period) and self._clock() - last >= timedelta(seconds=period)

    def _send(self, sub: Any, kind: str, events: list[NotificationEvent]) -> None:
        request = _request_of(sub)
        now = self._clock()
        status = "active" if sub.status != "requested" else "requested"
        bundle = notification_bundle(
            base=self._settings.http.fhir_base(), subscription_id=sub.id, status=status,
            kind=kind, events_since_start=int(sub.events_since_start), when=now, events=events,
            content=request.content,
        )  # fmt: skip
        headers = {"Content-Type": PAYLOAD_TYPE}
        for header in request.headers:
            name, _, value = header.partition(":")
            headers[name.strip()] = value.strip()
        error = ""
        try:
            code = self._post(request.endpoint, json.dumps(bundle).encode(), headers,
                              request.timeout_seconds)  # fmt: skip
            if not 200 <= code < 300:
                error = f"{kind}: the endpoint answered HTTP {code}"
        except OSError as exc:
            error = f"{kind}: the endpoint is unreachable ({type(exc).__name__})"
        with self._engine.begin() as conn:
            if not error and events:
                conn.execute(
                    update(subscription_events)
                    .where(subscription_events.c.subscription_id == sub.id,
                           subscription_events.c.event_number.in_([e.number for e in events]))
                    .values(sent_at=now)
                )  # fmt: skip
            if not error:
                conn.execute(
                    update(subscriptions)
                    .where(subscriptions.c.id == sub.id)
                    .values(last_sent_at=now)
                )
            record_event(
                conn,
                PipelineEvent(
                    kind=Event.NOTIFICATION_ATTEMPTED, actor=GATEWAY, occurred_at=now,
                    outcome="8" if error else "0", outcome_desc=error,
                    entities=(f"Subscription/{sub.id}",),
                    detail={"type": kind, "events": ",".join(str(e.number) for e in events),
                            "topic": TOPIC},
                ),
            )  # fmt: skip
            target = "error" if error else "active"
            if target != sub.status:
                set_status(conn, sub.id, target, now, GATEWAY, error)
        if error:
            log.warning("Subscription/%s: %s", sub.id, error)

    async def run_forever(self, stop: asyncio.Event) -> None:
        """Collect and deliver every `review.notification_batch_seconds` until stopped."""
        while not stop.is_set():
            try:
                await asyncio.to_thread(self.collect)
                await asyncio.to_thread(self.deliver)
            except Exception:  # a database hiccup must not end notifications for good
                log.exception("subscription notifier round failed; retrying next window")
            try:
                await asyncio.wait_for(
                    stop.wait(), self._settings.review.notification_batch_seconds
                )
            except TimeoutError:
                continue
