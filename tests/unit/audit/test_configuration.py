"""Configuration changes are audited at start-up, once per change, without passwords."""

from __future__ import annotations

import json
from dataclasses import replace

from sqlalchemy import Engine

from fhir_mapping.audit_event import details_of
from gateway.audit.configuration import record_configuration
from gateway.audit.trail import search
from gateway.settings import DatabaseSettings, ReviewSettings, Settings


def test_a_change_is_recorded_once_with_what_changed(audit_engine: Engine) -> None:
    settings = replace(
        Settings(), database=DatabaseSettings(url="postgresql+psycopg://gw:s3cret@db/gw")
    )
    assert record_configuration(audit_engine, settings)
    assert not record_configuration(audit_engine, settings)  # unchanged: nothing new
    changed = replace(settings, review=replace(settings.review, threshold=0.7))
    assert isinstance(changed.review, ReviewSettings)
    assert record_configuration(audit_engine, changed)
    with audit_engine.connect() as conn:
        events = [details_of(e) for e in search(conn, "AuditEvent")]
    assert [e["audit-activity"] for e in events] == ["configuration-changed"] * 2
    assert events[1]["changed"] == "review.threshold"
    recorded = json.loads(events[0]["settings"])
    assert recorded["database.url"] == '"postgresql+psycopg://gw:***@db/gw"'
    assert "s3cret" not in json.dumps(events)
