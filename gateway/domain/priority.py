"""The one priority mapping table: FHIR request-priority ↔ HL7 v2 (0485, 0027) ↔ DICOM UPS.

The table is total over FHIR request-priority (http://hl7.org/fhir/ValueSet/request-priority) and
each row's codes are valid in their own code system (HL7 tables 0485 and 0027, PS3.3 (0074,1200)).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass

from gateway.domain.errors import InvalidInput


class Priority(enum.StrEnum):
    """FHIR R4 request-priority, ordered routine < urgent < asap < stat."""

    ROUTINE = "routine"
    URGENT = "urgent"
    ASAP = "asap"
    STAT = "stat"

    @property
    def rank(self) -> int:
        """Position in the FHIR order (higher is more urgent)."""
        return list(Priority).index(self)


@dataclass(frozen=True, slots=True)
class PriorityCodes:
    """One row of the mapping table."""

    fhir: Priority
    hl7_0485: str  # TQ1-9 (v2.5+)
    hl7_0027: str  # ORC-7.6 (v2.3 ORM^O01)
    ups: str  # ScheduledProcedureStepPriority (0074,1200)


PRIORITY_TABLE: dict[Priority, PriorityCodes] = {
    Priority.ROUTINE: PriorityCodes(Priority.ROUTINE, "R", "R", "MEDIUM"),
    Priority.URGENT: PriorityCodes(Priority.URGENT, "T", "T", "HIGH"),
    Priority.ASAP: PriorityCodes(Priority.ASAP, "A", "A", "HIGH"),
    Priority.STAT: PriorityCodes(Priority.STAT, "S", "S", "HIGH"),
}


def codes_for(priority: Priority) -> PriorityCodes:
    """The HL7 and DICOM codes for a FHIR priority."""
    return PRIORITY_TABLE[priority]


# The codes each system allows (HL7 tables 0485 and 0027 without the TS/TM… timing forms; the
# enumerated values of (0074,1200)), for per-destination overrides of the table above.
HL7_0485_CODES = frozenset({"S", "A", "R", "P", "C", "T", "PRN"})
HL7_0027_CODES = frozenset({"S", "A", "R", "P", "T"})
UPS_CODES = frozenset({"HIGH", "MEDIUM", "LOW"})


def parse_overrides(pairs: Iterable[str], allowed: frozenset[str]) -> dict[Priority, str]:
    """`urgent=A` pairs as {Priority.URGENT: "A"}; unknown priorities or codes raise."""
    overrides: dict[Priority, str] = {}
    for pair in pairs:
        name, _, code = pair.partition("=")
        try:
            priority = Priority(name.strip().lower())
        except ValueError:
            raise InvalidInput(f"{name.strip()!r} is not a FHIR request-priority") from None
        if code.strip() not in allowed:
            raise InvalidInput(f"{code.strip()!r} is not one of {sorted(allowed)}")
        overrides[priority] = code.strip()
    return overrides
