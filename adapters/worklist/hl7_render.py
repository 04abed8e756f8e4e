"""Renders a neutral `PriorityChange` as the HL7 v2 message a destination asked for.

The MSH-10 control id is derived from the idempotency key, so every retry of one change carries
the same id and a RIS that de-duplicates on MSH-10 applies it once.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from adapters.worklist.hl7_messages import MAX_CONTROL_ID, build_omi_o23, build_orm_o01
from gateway.domain.errors import InvalidInput
from gateway.domain.priority import Priority
from gateway.domain.worklist import PriorityChange

OMI_O23 = "OMI^O23"
ORM_O01 = "ORM^O01"
MESSAGES = (OMI_O23, ORM_O01)


def control_id_for(idempotency_key: str) -> str:
    """A stable 20-character MSH-10 for one idempotency key."""
    return hashlib.sha256(idempotency_key.encode("utf-8")).hexdigest()[:MAX_CONTROL_ID]


@dataclass(frozen=True, slots=True)
class Hl7Profile:
    """What one RIS expects: message structure and the MSH application/facility names."""

    message: str = OMI_O23
    sending_application: str = "HITLGW"
    sending_facility: str = ""
    receiving_application: str = "RIS"
    receiving_facility: str = ""
    # The destination's own choice for some priorities (table 0485 or 0027 code by message).
    overrides: Mapping[Priority, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.message not in MESSAGES:
            raise InvalidInput(f"HL7 message {self.message!r} is not one of {MESSAGES}")

    def render(self, change: PriorityChange) -> str:
        """The ER7 message for this change (OMI^O23 v2.5.1 or ORM^O01 v2.3)."""
        common: dict[str, Any] = {
            "control_id": control_id_for(change.idempotency_key),
            "sending_app": self.sending_application,
            "sending_facility": self.sending_facility,
            "receiving_app": self.receiving_application,
            "receiving_facility": self.receiving_facility,
            "patient_id": change.patient_id,
            "patient_name": change.patient_name,
            "accession_number": change.accession_number,
            "placer_order": change.placer_order_number,
            "filler_order": change.filler_order_number or change.accession_number,
            "priority": change.priority,
            "when": change.requested_at,
            "priority_code": self.overrides.get(change.priority, ""),
        }
        if self.message == ORM_O01:
            return build_orm_o01(**common)
        return build_omi_o23(study_instance_uid=change.study_instance_uid, **common)
