"""ORM^O01 (v2.3) under hl7apy strict parsing and per-segment strict validation; MSH-10 reuse.

hl7apy models the v2.3 ORDER_DETAIL choice (OBR | RQD | RQ1 | RXO | ODS | ODT) as a sequence of
required segments, so whole-message `validate()` cannot pass for any real ORM^O01; the message
is parsed strictly (segment placement) and each segment validated strictly instead.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message, parse_segment

from adapters.worklist.hl7_messages import build_orm_o01
from adapters.worklist.hl7_render import ORM_O01, Hl7Profile, control_id_for
from gateway.domain.errors import InvalidInput
from gateway.domain.priority import Priority, codes_for
from gateway.domain.worklist import PriorityChange

WHEN = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)


def _orm(priority: Priority = Priority.STAT, **overrides: str) -> str:
    fields = {
        "control_id": "CTRL0001",
        "sending_app": "HITLGW",
        "sending_facility": "HOSP",
        "receiving_app": "RIS",
        "receiving_facility": "HOSP",
        "patient_id": "PAT-001",
        "patient_name": "Doe^Jane",
        "accession_number": "ACC123",
        "placer_order": "PL-9",
        "filler_order": "FI-9",
    }
    fields.update(overrides)
    return build_orm_o01(priority=priority, when=WHEN, **fields)


@pytest.mark.parametrize("priority", list(Priority))
def test_orm_o01_is_strict_v2_3_for_every_priority(priority: Priority) -> None:
    text = _orm(priority)
    parsed = parse_message(text, validation_level=VALIDATION_LEVEL.STRICT)
    assert parsed.name == "ORM_O01"
    order = parsed.orm_o01_order
    assert [c.name for c in order.children] == ["ORC", "ORM_O01_ORDER_DETAIL"]
    for segment in text.split("\r"):
        parse_segment(segment, version="2.3", validation_level=VALIDATION_LEVEL.STRICT).validate()
    code = codes_for(priority).hl7_0027
    assert order.orc.orc_7.to_er7() == f"^^^^^{code}"
    assert order.orm_o01_order_detail.orm_o01_choice.obr.obr_27.to_er7() == f"^^^^^{code}"
    assert order.orm_o01_order_detail.orm_o01_choice.obr.obr_18.to_er7() == "ACC123"


def test_orm_o01_refuses_a_missing_accession() -> None:
    with pytest.raises(InvalidInput, match="OBR-18"):
        _orm(accession_number=" ")


def test_every_retry_of_one_change_carries_the_same_control_id() -> None:
    change = PriorityChange(
        idempotency_key="task-1:2",
        study_instance_uid="1.2.3",
        accession_number="ACC1",
        patient_id="PAT1",
        priority=Priority.ASAP,
        requested_at=WHEN,
    )
    profile = Hl7Profile(ORM_O01)
    first, second = profile.render(change), profile.render(change)
    assert first == second
    assert f"|{control_id_for('task-1:2')}|" in first
    assert control_id_for("task-1:2") != control_id_for("task-1:3")
    with pytest.raises(InvalidInput):
        Hl7Profile("ADT^A08")
