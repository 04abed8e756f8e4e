"""OMI^O23 building under hl7apy strict validation, and ACK parsing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message

from adapters.worklist.hl7_messages import (
    TABLE_0485_TEXT,
    build_omi_o23,
    control_id_of,
    new_control_id,
    parse_ack,
    person_name,
)
from gateway.domain.errors import InvalidInput
from gateway.domain.priority import Priority, codes_for

STUDY_UID = "1.2.826.0.1.3680043.8.498.12345678901234567890123456789012345"
WHEN = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)


def _omi(**overrides: Any) -> str:
    fields: dict[str, Any] = {
        "control_id": "CTRL0001",
        "sending_app": "HITLGW",
        "sending_facility": "HOSP",
        "receiving_app": "RIS",
        "receiving_facility": "HOSP",
        "patient_id": "PAT-001",
        "patient_name": "Doe^Jane^Q^Dr^PhD",
        "accession_number": "ACC123",
        "placer_order": "PL-9",
        "filler_order": "FI-9",
        "study_instance_uid": STUDY_UID,
        "priority": Priority.STAT,
        "when": WHEN,
    }
    fields.update(overrides)
    return build_omi_o23(**fields)


def _strict(message: str) -> Any:
    parsed = parse_message(message, validation_level=VALIDATION_LEVEL.STRICT)
    parsed.validate()
    return parsed


@pytest.mark.parametrize("priority", list(Priority))
def test_omi_o23_validates_strict_for_every_priority(priority: Priority) -> None:
    parsed = _strict(_omi(priority=priority))

    assert parsed.name == "OMI_O23"
    assert [c.name for c in parsed.children] == ["MSH", "OMI_O23_PATIENT", "OMI_O23_ORDER"]
    order = parsed.omi_o23_order
    assert [c.name for c in order.children] == ["ORC", "OMI_O23_TIMING", "OBR", "IPC"]
    tq1_9 = order.omi_o23_timing.tq1.tq1_9
    assert tq1_9.tq1_9_1.to_er7() == codes_for(priority).hl7_0485
    assert tq1_9.tq1_9_1.to_er7() in TABLE_0485_TEXT
    assert tq1_9.tq1_9_3.to_er7() == "HL70485"


def test_omi_o23_fields() -> None:
    parsed = _strict(_omi())
    msh = parsed.msh
    assert msh.msh_9.to_er7() == "OMI^O23^OMI_O23"
    assert msh.msh_10.to_er7() == "CTRL0001"
    assert msh.msh_12.to_er7() == "2.5.1"
    assert msh.msh_7.to_er7() == "20240506070809+0000"
    pid = parsed.omi_o23_patient.pid
    assert pid.pid_3.to_er7() == "PAT-001"
    assert pid.pid_5.to_er7() == "Doe^Jane^Q^PhD^Dr"
    order = parsed.omi_o23_order
    assert order.orc.orc_1.to_er7() == "XO"
    assert order.orc.orc_2.to_er7() == "PL-9"
    assert order.orc.orc_3.to_er7() == "FI-9"
    assert order.obr.obr_2.to_er7() == "PL-9"
    assert order.obr.obr_3.to_er7() == "FI-9"
    assert order.obr.obr_4.obr_4_1.to_er7() == "IMG"
    ipc = order.ipc
    assert ipc.ipc_1.to_er7() == "ACC123"
    assert ipc.ipc_2.to_er7() == "ACC123"
    assert ipc.ipc_3.to_er7() == STUDY_UID
    assert ipc.ipc_4.to_er7() == "ACC123"


def test_segments_are_joined_with_carriage_returns() -> None:
    message = _omi()
    assert "\n" not in message
    assert [s[:3] for s in message.split("\r")] == ["MSH", "PID", "ORC", "TQ1", "OBR", "IPC"]


def test_explicit_procedure_ids_and_time_zone_are_honoured() -> None:
    local = WHEN.astimezone(timezone(timedelta(hours=2)))
    parsed = _strict(
        _omi(requested_procedure_id="RP1", scheduled_procedure_step_id="SPS1", when=local)
    )
    assert parsed.omi_o23_order.ipc.ipc_2.to_er7() == "RP1"
    assert parsed.omi_o23_order.ipc.ipc_4.to_er7() == "SPS1"
    assert parsed.msh.msh_7.to_er7() == "20240506070809+0000"


def test_delimiters_in_values_are_escaped() -> None:
    message = _omi(patient_id="A|B", patient_name="O'Neil&Co^Ann~Marie")
    parsed = _strict(message)
    assert parsed.omi_o23_patient.pid.pid_3.to_er7() == "A\\F\\B"
    assert parsed.omi_o23_patient.pid.pid_5.pid_5_1.to_er7() == "O'Neil\\T\\Co"
    assert len(message.split("\r")) == 6


def test_person_name_uses_the_alphabetic_group_and_xpn_order() -> None:
    assert person_name("Yamada^Tarou=山田^太郎=やまだ^たろう") == "Yamada^Tarou"
    assert person_name("Doe") == "Doe"
    assert person_name("Doe^John^^Mr") == "Doe^John^^^Mr"


@pytest.mark.parametrize(
    "overrides",
    [
        {"control_id": "X" * 21},
        {"control_id": ""},
        {"patient_id": " "},
        {"accession_number": ""},
        {"study_instance_uid": ""},
        {"when": datetime(2024, 1, 1)},
        {"patient_name": "Doe\rInjected"},
    ],
)
def test_unsendable_values_are_refused(overrides: dict[str, Any]) -> None:
    with pytest.raises(InvalidInput):
        _omi(**overrides)


def test_new_control_ids_fit_msh_10_and_differ() -> None:
    ids = {new_control_id() for _ in range(50)}
    assert len(ids) == 50
    assert all(len(i) == 20 for i in ids)
    assert control_id_of(_omi(control_id=next(iter(ids)))) in ids


MSH = "MSH|^~\\&|RIS|H|HITLGW|H|20240101||ACK^O23^ACK|A1|P|2.5.1"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"{MSH}\rMSA|AA|CTRL0001", ("AA", "CTRL0001", "")),
        (f"{MSH}\nMSA|ae|C2|busy, try later\n", ("AE", "C2", "busy, try later")),
        (f"{MSH}\r\nMSA|AR|C3\r\nERR||||E|||bad IPC|unknown order", ("AR", "C3", "unknown order")),
        (f"{MSH}\rMSA|AE|C5\rERR||||E|||bad IPC", ("AE", "C5", "bad IPC")),
        ("MSH#^~\\&#R##X##2024##ACK#A4#P#2.5.1\rMSA#CA#C4#ok", ("CA", "C4", "ok")),
    ],
)
def test_parse_ack(text: str, expected: tuple[str, str, str]) -> None:
    assert parse_ack(text) == expected


@pytest.mark.parametrize(
    "text",
    ["", "garbage", "MSH|^~\\&|R\rPID|||1", "MSH|^~\\&|R\rMSA||C1"],
)
def test_parse_ack_refuses_what_is_not_an_ack(text: str) -> None:
    with pytest.raises(InvalidInput):
        parse_ack(text)
