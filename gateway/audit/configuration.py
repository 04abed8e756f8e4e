"""Configuration changes are audited: at start-up the effective settings are compared with those
last recorded, and a change is written to the trail with the settings that differ.

Only names and values of settings are recorded: settings name files holding secrets, not the
secrets, and passwords inside URLs are replaced by `***`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, select

from fhir_mapping.audit_event import details_of
from fhir_mapping.canonical import canonical_json
from gateway.audit.activity import activity_event
from gateway.audit.trail import append, index_param
from gateway.persistence.tables import audit_index, audit_log
from gateway.settings import Settings

ACTIVITY = "configuration-changed"


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, str) and "://" in value and "@" in value:
        return _without_password(value)
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)


def _without_password(url: str) -> str:
    # A database or peer URL may carry a password; the trail keeps the URL without it.
    scheme, _, rest = url.partition("://")
    credentials, at, host = rest.rpartition("@")
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}:***{at}{host}" if ":" in credentials else url


def flatten(settings: Settings) -> dict[str, str]:
    """`section.name` → canonical JSON of the value, for every setting."""
    return {
        f"{section.name}.{name}": canonical_json(value)
        for section in dataclasses.fields(settings)
        for name, value in _plain(getattr(settings, section.name)).items()
    }


def record_configuration(engine: Engine, settings: Settings, now: datetime | None = None) -> bool:
    """Audit the effective configuration if it differs from the last one recorded; True if so."""
    flat = flatten(settings)
    digest = hashlib.sha256(canonical_json(flat).encode("utf-8")).hexdigest()
    with engine.begin() as conn:
        last = conn.execute(
            select(audit_log.c.resource)
            .join(audit_index, audit_index.c.seq == audit_log.c.seq)
            .where(
                audit_index.c.param == index_param("AuditEvent", "activity"),
                audit_index.c.value == ACTIVITY,
            )
            .order_by(audit_index.c.recorded.desc(), audit_index.c.seq.desc())
            .limit(1)
        ).scalar_one_or_none()
        previous: dict[str, str] = {}
        if last is not None:
            details = details_of(json.loads(last))
            if details.get("settings-sha256") == digest:
                return False
            previous = json.loads(details.get("settings", "{}"))
        changed = sorted(k for k in flat.keys() | previous.keys() if flat.get(k) != previous.get(k))
        append(
            conn,
            "AuditEvent",
            activity_event(
                ACTIVITY,
                action="U",
                when=now or datetime.now(UTC),
                detail={
                    "settings-sha256": digest,
                    "changed": ",".join(changed),
                    "settings": canonical_json(flat),
                },
            ),
        )
    return True
