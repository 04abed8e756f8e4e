"""A study without an encounter in its header gets it from the EHR before its review Task."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, create_engine

from gateway.domain.errors import DeliveryFailed
from gateway.domain.model import ModelIdentity, StudyContext, StudyState
from gateway.encounter_context import with_encounter
from gateway.persistence.migrate import upgrade
from gateway.ports import ModelOutput
from gateway.scoring_step import ScoringStep
from gateway.settings import Settings

STUDY = StudyContext("1.2.3.4", "PAT-1", "Doe^Jane", "ACC-1", "DX")


class _Ehr:
    def __init__(self, answer: str = "enc-9", fail: bool = False) -> None:
        self.answer, self.fail = answer, fail
        self.asked: list[str] = []

    async def encounter_for_accession(self, accession_number: str) -> str:
        self.asked.append(accession_number)
        if self.fail:
            raise DeliveryFailed("EHR down")
        return self.answer


async def test_the_encounter_comes_from_the_ehr_only_when_missing() -> None:
    ehr = _Ehr()
    assert (await with_encounter(STUDY, ehr)).encounter_id == "enc-9"
    known = replace(STUDY, encounter_id="enc-header")
    assert await with_encounter(known, ehr) == known
    assert await with_encounter(replace(STUDY, accession_number=""), ehr) == replace(
        STUDY, accession_number=""
    )
    assert ehr.asked == ["ACC-1"]
    assert await with_encounter(STUDY, None) == STUDY
    assert await with_encounter(STUDY, _Ehr(answer="")) == STUDY
    assert await with_encounter(STUDY, _Ehr(fail=True)) == STUDY


class _Assembler:
    def __init__(self) -> None:
        self.due = [STUDY]

    def claim_due(self, _now: datetime) -> list[StudyContext]:
        claimed, self.due = self.due, []
        return claimed

    def mark_done(self, _conn: Connection, _uid: str, _state: StudyState | str) -> bool:
        return True


class _Scorer:
    def score(self, _paths: Sequence[str]) -> ModelOutput:
        return ModelOutput(0.97, ModelIdentity("cxr", "1", "ab" * 32), "cd" * 32, "pneumothorax")

    def describe(self) -> dict[str, str]:
        return {"status": "ok"}


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    """A migrated gateway database."""
    db = create_engine(f"sqlite:///{tmp_path}/gw.db")
    upgrade(db)
    yield db
    db.dispose()


async def test_the_scoring_step_asks_for_review_with_the_resolved_encounter(
    engine: Engine,
) -> None:
    written: list[StudyContext] = []

    def write(_conn: Connection, study: StudyContext, *_: Any) -> dict[str, Any]:
        written.append(study)
        return {}

    step = ScoringStep(
        engine=engine,
        settings=Settings(),
        assembler=_Assembler(),  # type: ignore[arg-type]
        scorer=_Scorer(),
        write_review_task=write,
        encounters=_Ehr(),
    )
    try:
        await step.run_once()
    finally:
        step.close()
    assert [s.encounter_id for s in written] == ["enc-9"]
