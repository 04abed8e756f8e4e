"""A worklist priority change as the outbox keeps it: neutral facts, no wire format.

The review service queues one `PriorityChange` per configured destination; each worklist adapter
renders its own message (HL7 v2, UPS-RS, FHIR ServiceRequest, webhook JSON) at delivery time, so
the core never depends on a peer's protocol and a destination's format can change without
touching queued rows.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from gateway.domain.errors import InvalidInput
from gateway.domain.priority import Priority

PRIORITY_CHANGE_KIND = "priority-change"
SCHEMA_VERSION = 1


@dataclass(frozen=True, slots=True)
class PriorityChange:
    """One requested worklist priority for one study, keyed for idempotent delivery."""

    idempotency_key: str
    study_instance_uid: str
    accession_number: str
    patient_id: str
    priority: Priority
    requested_at: datetime
    patient_name: str = ""
    encounter_id: str = ""
    placer_order_number: str = ""
    filler_order_number: str = ""

    def __post_init__(self) -> None:
        missing = [
            name
            for name in ("idempotency_key", "study_instance_uid", "accession_number", "patient_id")
            if not str(getattr(self, name)).strip()
        ]
        if missing:
            raise InvalidInput(f"a priority change needs {', '.join(missing)}", code="required")
        if self.requested_at.tzinfo is None:
            raise InvalidInput("requested_at must be timezone-aware")

    def to_json(self) -> str:
        """The canonical JSON payload stored in the outbox row."""
        document: dict[str, Any] = asdict(self)
        document["priority"] = self.priority.value
        document["requested_at"] = self.requested_at.astimezone(UTC).isoformat()
        document["schema"] = SCHEMA_VERSION
        return json.dumps(document, sort_keys=True, ensure_ascii=False, separators=(",", ":"))

    @classmethod
    def from_json(cls, payload: str) -> PriorityChange:
        """Read a stored payload; malformed payloads raise InvalidInput."""
        try:
            document = json.loads(payload)
            if document.pop("schema", None) != SCHEMA_VERSION:
                raise InvalidInput("unknown priority-change schema version")
            document["priority"] = Priority(document["priority"])
            document["requested_at"] = datetime.fromisoformat(document["requested_at"])
            return cls(**document)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise InvalidInput(f"not a priority-change payload: {exc}") from exc
