"""Provenance of the AI-created Task and of a reviewer's decision (standards.md §2.1)."""

from __future__ import annotations

import pytest

from fhir_mapping.provenance import decision_provenance, scoring_provenance
from fhir_mapping.r4 import Provenance, validate
from fhir_mapping.task import study_reference
from gateway.domain.model import Actor, Decision
from tests.unit.fhir.samples import STUDY_UID, WHEN


def test_scoring_provenance_names_model_as_author_and_study_as_source() -> None:
    prov = scoring_provenance(
        provenance_id="p1",
        task_ref_versioned="Task/t1/_history/1",
        study_ref=study_reference(STUDY_UID),
        model_device_ref="Device/cxr-pneumothorax-3",
        input_hash="cd" * 32,
        when=WHEN,
    )
    validate(Provenance, prov)
    assert prov["activity"]["coding"][0]["code"] == "CREATE"
    assert prov["target"] == [{"reference": "Task/t1/_history/1"}]
    agents = [(a["type"]["coding"][0]["code"], a["who"]["reference"]) for a in prov["agent"]]
    assert agents == [
        ("author", "Device/cxr-pneumothorax-3"),
        ("custodian", "Device/hitl-gateway"),
    ]
    assert prov["entity"][0] == {"role": "source", "what": study_reference(STUDY_UID)}
    assert prov["recorded"] == "2026-01-02T03:04:05.000Z"


@pytest.mark.parametrize(
    ("decision", "human_type"),
    [(Decision.APPROVE, "verifier"), (Decision.OVERRIDE, "author"), (Decision.REJECT, "author")],
)
def test_decision_provenance_names_the_reviewer(decision: Decision, human_type: str) -> None:
    prov = decision_provenance(
        provenance_id="p2",
        task_ref_versioned="Task/t1/_history/2",
        reviewer=Actor(reference="Practitioner/dr-1"),
        study_ref=study_reference(STUDY_UID),
        model_device_ref="Device/cxr-pneumothorax-3",
        decision=decision,
        when=WHEN,
        prior_task_version_ref="Task/t1/_history/1",
    )
    validate(Provenance, prov)
    assert prov["activity"]["coding"][0]["code"] == "UPDATE"
    assert prov["agent"][0]["who"] == {"reference": "Practitioner/dr-1"}
    assert prov["agent"][0]["type"]["coding"][0]["code"] == human_type
    assert prov["agent"][1]["who"] == {"reference": "Device/cxr-pneumothorax-3"}
    assert {"role": "revision", "what": {"reference": "Task/t1/_history/1"}} in prov["entity"]
