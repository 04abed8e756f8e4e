"""Pure parts of the FHIR facade: search values, paging links, PHI masking, patient compartment."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import Column, DateTime, MetaData, Table
from sqlalchemy.dialects import sqlite

from gateway.auth.tokens import Principal, parse_scope
from gateway.domain.errors import InvalidInput, NotFound
from gateway.domain.model import Actor
from gateway.fhir_api.access import (
    check_compartment,
    compartment,
    mask_phi,
    may_see_phi,
    pseudonym,
)
from gateway.fhir_api.core import FhirRequest
from gateway.fhir_api.search import (
    Page,
    date_clause,
    page,
    reference_value,
    searchset,
    sort_keys,
    token_code,
)

T = Table("t", MetaData(), Column("at", DateTime(timezone=True)))


def _req(*pairs: tuple[str, str]) -> FhirRequest:
    return FhirRequest("GET", "/fhir/Task", {}, query=pairs, base="http://h/fhir")


def _sql(clause: object) -> str:
    return str(clause.compile(dialect=sqlite.dialect(), compile_kwargs={"literal_binds": True}))  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2026-01-02", ["t.at >= '2026-01-02 00:00:00", "t.at < '2026-01-03 00:00:00"]),
        ("gt2026-01", ["t.at >= '2026-02-01 00:00:00"]),
        ("lt2026", ["t.at < '2026-01-01 00:00:00"]),
        ("ge2026-01-02T03:04:05Z", ["t.at >= '2026-01-02 03:04:05"]),
        ("le2026-01-02T03:04:05+01:00", ["t.at < '2026-01-02 02:04:06"]),
    ],
)
def test_date_prefixes_cover_the_precision_of_the_value(value: str, expected: list[str]) -> None:
    sql = _sql(date_clause(T.c.at, value))
    for part in expected:
        assert part in sql


def test_bad_dates_and_counts_are_invalid_input() -> None:
    with pytest.raises(InvalidInput):
        date_clause(T.c.at, "yesterday")
    with pytest.raises(InvalidInput):
        page(_req(("_count", "many")))
    with pytest.raises(InvalidInput):
        page(_req(("_count", "-1")))
    assert page(_req(("_count", "5000"))) == Page(200, 0)


def test_reference_and_token_values() -> None:
    assert reference_value("http://x/fhir/Patient/p1", "Patient") == "Patient/p1"
    assert reference_value("p1", "Patient") == "Patient/p1"
    assert reference_value("Task/t1/_history/3", "") == "Task/t1"
    assert token_code("http://s|c") == ("http://s", "c")
    assert token_code("c") == (None, "c")
    with pytest.raises(InvalidInput):
        sort_keys(_req(("_sort", "colour")), {"status": T.c.at})


def test_searchset_paging_links() -> None:
    request = _req(("status", "requested"), ("_count", "10"), ("_offset", "10"))
    bundle = searchset(request, "Task", [], total=25, paging=Page(10, 10))
    links = {link["relation"]: link["url"] for link in bundle["link"]}
    assert links["next"].endswith("_offset=20")
    assert links["previous"].endswith("status=requested&_count=10")
    assert links["last"].endswith("_offset=20")
    assert "entry" not in bundle


def _principal(scope: str, roles: tuple[str, ...] = ("reviewer",), patient: str = "") -> Principal:
    scopes = tuple(s for s in (parse_scope(p) for p in scope.split()) if s is not None)
    return Principal(Actor("Practitioner/x", roles=roles), scopes, scope, patient=patient)


def test_compartment_limits_only_patient_scoped_callers() -> None:
    assert compartment(_principal("user/Task.rs"), "Task", "r") is None
    assert compartment(_principal("patient/Task.rs", patient="p1"), "Task", "r") == "p1"
    assert compartment(_principal("patient/Task.rs user/Task.s", patient="p1"), "Task", "s") is None
    check_compartment("p1", "p1", "Task/t")
    with pytest.raises(NotFound):
        check_compartment("p1", "p2", "Task/t")


def test_mask_phi_replaces_patient_references_and_labels_the_resource() -> None:
    event: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "id": "a",
        "entity": [
            {"what": {"reference": "Patient/MRN-1"}, "role": {"code": "1"}, "name": "Doe^Jane"},
            {"what": {"reference": "Task/t1"}, "role": {"code": "4"}},
        ],
    }
    masked = mask_phi(event)
    text = str(masked)
    assert "MRN-1" not in text
    assert "Doe^Jane" not in text
    assert masked["entity"][0]["what"]["identifier"]["value"] == pseudonym("MRN-1")
    assert masked["entity"][1]["what"] == {"reference": "Task/t1"}
    assert masked["meta"]["security"][-1]["code"] == "REDACTED"
    assert event["entity"][0]["name"] == "Doe^Jane"  # the input is not changed
    assert not may_see_phi(_principal("user/AuditEvent.rs", roles=("auditor",)))
    assert may_see_phi(_principal("user/AuditEvent.rs", roles=("auditor", "auditor-phi")))
    assert may_see_phi(_principal("user/Task.rs", roles=("reviewer",)))


def test_mask_phi_accepts_agents_whose_role_is_a_list() -> None:
    # AuditEvent.agent.role is 0..* CodeableConcept, AuditEvent.entity.role a single Coding:
    # masking must handle both shapes (it used to fail on the list, answering auditors with 500).
    event: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "agent": [
            {
                "who": {"reference": "Practitioner/p1"},
                "role": [{"coding": [{"code": "110153"}]}],
                "requestor": True,
            }
        ],
        "entity": [{"what": {"reference": "Patient/MRN-2"}, "role": {"code": "1"}}],
    }
    masked = mask_phi(event)
    assert masked["agent"][0]["role"] == event["agent"][0]["role"]
    assert "MRN-2" not in str(masked)
