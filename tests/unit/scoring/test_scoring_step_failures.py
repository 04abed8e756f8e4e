"""A model that hangs or raises: standard triage within the timeout, audited, pool degraded."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import pytest
from sqlalchemy import Connection, Engine, create_engine, select

from fhir_mapping.audit_event import DETAIL_EVENT, details_of
from gateway.audit.trail import search
from gateway.domain.model import StudyContext, StudyState
from gateway.persistence.migrate import upgrade
from gateway.persistence.tables import scores
from gateway.ports import ModelOutput
from gateway.scoring_step import ScoringStep
from gateway.settings import ScoringSettings, Settings


class _Assembler:
    def __init__(self) -> None:
        self.due: list[StudyContext] = []
        self.states: dict[str, str] = {}

    def claim_due(self, _now: datetime) -> list[StudyContext]:
        claimed, self.due = self.due, []
        return claimed

    def mark_done(self, _conn: Connection, uid: str, state: StudyState | str) -> bool:
        self.states[uid] = str(StudyState(state).value)
        return True


class _Hanging:
    def __init__(self) -> None:
        self.release = threading.Event()

    def score(self, _paths: Sequence[str]) -> ModelOutput:
        self.release.wait(30)
        raise RuntimeError("released")

    def describe(self) -> dict[str, str]:
        return {"status": "ok"}


class _Raising:
    def score(self, _paths: Sequence[str]) -> ModelOutput:
        raise ZeroDivisionError("inside the model")

    def describe(self) -> dict[str, str]:
        return {"status": "ok"}


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    """A migrated gateway database."""
    db = create_engine(f"sqlite:///{tmp_path}/gw.db")
    upgrade(db)
    yield db
    db.dispose()


def _study(n: int) -> StudyContext:
    return StudyContext(f"1.2.3.{n}", f"P{n}", "Doe^J", f"A{n}", "DX")


def _step(engine: Engine, scorer: object, assembler: _Assembler) -> ScoringStep:
    settings = replace(Settings(), scoring=ScoringSettings(timeout_seconds=0.5, workers=1))
    return ScoringStep(
        engine=engine,
        settings=settings,
        assembler=assembler,  # type: ignore[arg-type]
        scorer=scorer,  # type: ignore[arg-type]
        write_review_task=lambda *_: None,
    )


def _rows(engine: Engine) -> list[tuple[str, str]]:
    with engine.connect() as conn:
        return [(r.outcome, r.fallback_reason) for r in conn.execute(select(scores))]


async def test_a_hung_model_falls_back_within_the_timeout_and_degrades(engine: Engine) -> None:
    assembler, model = _Assembler(), _Hanging()
    step = _step(engine, model, assembler)
    try:
        assembler.due = [_study(1)]
        started = time.monotonic()
        await step.run_once()
        assert time.monotonic() - started < 2.0
        assert _rows(engine) == [("standard-triage", "model timed out after 0.5 s")]
        assert assembler.states["1.2.3.1"] == "standard-triage"
        assert step.health()["status"] == "degraded"
        assert step.health()["hung_workers"] == 1

        # While the worker is still hung, the next study falls back at once instead of queueing.
        assembler.due = [_study(2)]
        await step.run_once()
        assert "still hung" in _rows(engine)[-1][1]

        model.release.set()
        await asyncio.wait([asyncio.wrap_future(f) for f in step._hung], timeout=5)
        assert step.health()["status"] == "ok"
        assert step.timeouts == 1
    finally:
        model.release.set()
        step.close()
    with engine.connect() as conn:
        kinds = [details_of(a).get(DETAIL_EVENT) for a in search(conn, "AuditEvent")]
    assert kinds == ["scoring-worker-hung", "standard-triage", "standard-triage"]


async def test_a_raising_model_falls_back_and_is_audited(engine: Engine) -> None:
    assembler = _Assembler()
    step = _step(engine, _Raising(), assembler)
    try:
        assembler.due = [_study(3)]
        await step.run_once()
    finally:
        step.close()
    assert _rows(engine) == [("standard-triage", "model error: ZeroDivisionError")]
    assert step.fallbacks == 1
    assert step.health()["status"] == "ok"
