"""The UPS-RS peer follows PS3.4 Table CC.1.1-2; the adapter maps every status it may meet."""

from __future__ import annotations

from typing import Any

import pytest

from adapters.worklist.http_peer import Reply
from adapters.worklist.ups_rs import UPS_STATUSES, status_of
from tests.peers.ups_rs_server import UpsError, change_state

UID = "2.25.1"
STATES = ["SCHEDULED", "IN PROGRESS", "COMPLETED", "CANCELED"]


def _item(state: str, *, performed: bool = True) -> dict[str, Any]:
    item: dict[str, Any] = {"00741000": {"vr": "CS", "Value": [state]}}
    if performed:
        item["00741216"] = {"vr": "SQ", "Value": [{}]}
    return item


# Table CC.1.1-2, columns SCHEDULED / IN PROGRESS / COMPLETED / CANCELED ("ok" = new state).
TABLE = {
    ("IN PROGRESS", UID): ["ok", "C302", "C300", "C300"],
    ("IN PROGRESS", ""): ["C301", "C301", "C301", "C301"],
    ("SCHEDULED", UID): ["C303", "C303", "C303", "C303"],
    ("COMPLETED", UID): ["C310", "ok", "B306", "C300"],
    ("CANCELED", UID): ["C310", "ok", "C300", "B304"],
    ("COMPLETED", "2.25.wrong"): ["C310", "C301", "C301", "C301"],
}


@pytest.mark.parametrize(("requested", "given"), list(TABLE))
@pytest.mark.parametrize("column", range(4))
def test_change_state_follows_table_cc_1_1_2(requested: str, given: str, column: int) -> None:
    expected = TABLE[(requested, given)][column]
    if expected == "ok":
        assert change_state(_item(STATES[column]), requested, given, UID) == requested
        return
    with pytest.raises(UpsError) as raised:
        change_state(_item(STATES[column]), requested, given, UID)
    assert raised.value.code == expected


def test_not_existing_workitem_is_c307() -> None:
    with pytest.raises(UpsError) as raised:
        change_state(None, "IN PROGRESS", UID, "")
    assert raised.value.code == "C307"


def test_completion_needs_the_final_state_requirements() -> None:
    with pytest.raises(UpsError) as raised:
        change_state(_item("IN PROGRESS", performed=False), "COMPLETED", UID, UID)
    assert raised.value.code == "C304"


@pytest.mark.parametrize("code", sorted(UPS_STATUSES))
def test_every_status_in_a_warning_header_is_recognised(code: str) -> None:
    reply = Reply(409, {"Warning": f"299 ups-rs: 0x{code} some text"}, b"")
    status = status_of(reply)
    assert status is not None
    assert status.code == code
    assert status.action in {"recheck", "retry", "refuse", "final"}


def test_a_warning_without_a_known_status_is_none() -> None:
    assert status_of(Reply(409, {"Warning": "299 dcm4chee: conflict"}, b"")) is None
    assert status_of(Reply(409, {}, b"")) is None
