"""Sample domain objects, review bodies and a migrated-like schema for the FHIR-side tests."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine

from fhir_mapping import codesystems as cs
from gateway.audit.trail import ensure_head
from gateway.domain.model import ModelIdentity, ScoreResult, StudyContext, Thresholds
from gateway.persistence.db import make_engine
from gateway.persistence.tables import metadata
from gateway.persistence.triggers import install_append_only_triggers

STUDY_UID = "1.2.826.0.1.3680043.8.498.1"
WHEN = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
MODEL = ModelIdentity(name="cxr-pneumothorax", version="3", sha256="ab" * 32)


def study(*, patient_id: str = "pat-1", encounter_id: str = "enc-1") -> StudyContext:
    """A chest X-ray study with patient and encounter known (unless blanked)."""
    return StudyContext(
        study_instance_uid=STUDY_UID,
        patient_id=patient_id,
        patient_name="Doe^Jane",
        accession_number="ACC-1",
        modality="CR",
        encounter_id=encounter_id,
    )


def score(value: float = 0.91) -> ScoreResult:
    """A score from the governed demo model."""
    return ScoreResult(
        study_instance_uid=STUDY_UID,
        thresholds=Thresholds(review=0.8, secondary_review=0.95),
        input_hash="cd" * 32,
        score=value,
        model=MODEL,
    )


def output(code: str, **value: Any) -> dict[str, Any]:
    """One Task.output entry typed with the review-output-type code."""
    return {"type": cs.concept(cs.OUTPUT_TYPE_SYSTEM, code), **value}


def decision_body(
    current: dict[str, Any],
    decision: str | None = "approve",
    rationale: str | None = "finding-confirmed",
    text: str = "",
    override: str | None = None,
    status: str = "completed",
) -> dict[str, Any]:
    """A reviewer's PUT body: the current Task with status and review outputs set."""
    body = copy.deepcopy(current)
    body["status"] = status
    outputs = []
    if decision is not None:
        outputs.append(
            output(
                "decision",
                valueCodeableConcept={"coding": [{"system": cs.DECISION_SYSTEM, "code": decision}]},
            )
        )
    if rationale is not None:
        outputs.append(
            output(
                "rationale",
                valueCodeableConcept={
                    "coding": [{"system": cs.RATIONALE_SYSTEM, "code": rationale}]
                },
            )
        )
    if text:
        outputs.append(output("rationale-text", valueString=text))
    if override is not None:
        outputs.append(output("override-priority", valueCode=override))
    if outputs:
        body["output"] = outputs
    return body


@contextmanager
def gateway_engine(url: str) -> Iterator[Engine]:
    """An engine on a schema holding every gateway table, the audit triggers and the chain head."""
    engine = make_engine(url)
    with engine.begin() as conn:
        metadata.create_all(conn)
        install_append_only_triggers(conn)
        ensure_head(conn)
    try:
        yield engine
    finally:
        engine.dispose()
