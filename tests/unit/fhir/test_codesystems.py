"""The published CodeSystems: valid R4 resources whose tables state the review rules."""

from __future__ import annotations

import pytest

from fhir_mapping import codesystems as cs
from fhir_mapping.r4 import CodeSystem, validate
from gateway.domain.model import Decision


@pytest.mark.parametrize("resource", cs.all_code_systems(), ids=lambda r: str(r["id"]))
def test_each_code_system_validates_under_r4(resource: dict[str, object]) -> None:
    validate(CodeSystem, resource)
    assert str(resource["url"]).startswith("http://hitl-gateway.org/fhir/CodeSystem/")
    assert resource["count"] == len(resource["concept"])  # type: ignore[arg-type]


def test_decision_and_output_type_codes_are_the_published_ones() -> None:
    assert {d.value for d in cs.DECISIONS} == {"approve", "override", "reject"}
    assert set(cs.OUTPUT_TYPES) == {"decision", "rationale", "rationale-text", "override-priority"}
    assert cs.DECISION_SYSTEM == "http://hitl-gateway.org/fhir/CodeSystem/review-decision"
    assert cs.RATIONALE_SYSTEM == "http://hitl-gateway.org/fhir/CodeSystem/review-rationale"


def test_every_decision_has_a_rationale_and_only_other_needs_text() -> None:
    for decision in Decision:
        assert any(decision in r.decisions for r in cs.RATIONALES.values())
    assert [r.code for r in cs.RATIONALES.values() if r.text_required] == ["other"]


def test_rationale_properties_are_published() -> None:
    resource = cs.code_system_resource(cs.RATIONALE_SYSTEM)
    other = next(c for c in resource["concept"] if c["code"] == "other")
    assert {"code": "text-required", "valueBoolean": True} in other["property"]
    assert cs.code_system_by_id("review-rationale") == resource
    assert cs.code_system_by_id("absent") is None
