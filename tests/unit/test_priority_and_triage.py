"""The priority mapping table and the triage proposal."""

from __future__ import annotations

import pytest

from gateway.domain.model import ScoreResult, Thresholds
from gateway.domain.priority import PRIORITY_TABLE, Priority, codes_for
from gateway.domain.triage import proposed_priority

HL7_0485 = {"S", "A", "R", "P", "C", "T", "PRN"}
HL7_0027 = {"S", "A", "R", "P", "T"}
UPS = {"HIGH", "MEDIUM", "LOW"}


def test_mapping_is_total_over_fhir_request_priority() -> None:
    assert set(PRIORITY_TABLE) == set(Priority)


@pytest.mark.parametrize("priority", list(Priority))
def test_each_row_uses_valid_codes(priority: Priority) -> None:
    row = codes_for(priority)
    assert row.fhir is priority
    assert row.hl7_0485 in HL7_0485
    assert row.hl7_0027 in HL7_0027
    assert row.ups in UPS


def test_hl7_codes_round_trip_to_fhir() -> None:
    back = {codes_for(p).hl7_0485: p for p in Priority}
    assert len(back) == len(Priority)


T = Thresholds(review=0.8, secondary_review=0.95)


@pytest.mark.parametrize(
    ("score", "expected"),
    [
        (None, Priority.ROUTINE),
        (0.2, Priority.ROUTINE),
        (0.7999, Priority.ROUTINE),
        (0.8, Priority.URGENT),
        (0.94, Priority.URGENT),
        (0.95, Priority.ASAP),
    ],
)
def test_proposed_priority(score: float | None, expected: Priority) -> None:
    result = ScoreResult(study_instance_uid="1.2", thresholds=T, input_hash="x", score=score)
    assert proposed_priority(result) is expected
    assert result.needs_review is (score is not None and score >= 0.8)
