"""Inference in killable child processes: hang, crash and error each give ModelUnavailable."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from gateway.domain.errors import ModelUnavailable
from gateway.ports import ModelOutput
from scoring.isolation import IsolatedScorer, ScorerSpec
from tests.unit.scoring.isolation_fakes import IDENTITY, fake_scorer


class _Parent:
    def __init__(self) -> None:
        self.observed: list[tuple[ModelOutput, float]] = []

    def describe(self) -> dict[str, str]:
        return {"status": "ok"}

    def observe(self, output: ModelOutput, input_mean: float) -> None:
        self.observed.append((output, input_mean))


@pytest.fixture
def parent() -> _Parent:
    """The in-process side: readiness and drift monitoring."""
    return _Parent()


@pytest.fixture
def scorer(parent: _Parent) -> Iterator[IsolatedScorer]:
    """One child worker with a one-second deadline."""
    isolated = IsolatedScorer(
        ScorerSpec("sqlite:///unused.db", "fake", "production", 30.0),
        parent,
        workers=1,
        deadline_seconds=1.0,
        factory=fake_scorer,
    )
    yield isolated
    isolated.close()


def test_scores_in_the_child_and_feeds_monitoring(scorer: IsolatedScorer, parent: _Parent) -> None:
    output = scorer.score(["ok"])
    assert (output.model, output.score) == (IDENTITY, 0.25)
    assert parent.observed == [(output, 0.5)]


def test_a_hung_model_is_killed_at_the_deadline_and_replaced(scorer: IsolatedScorer) -> None:
    scorer.score(["ok"])  # the child is up
    started = time.monotonic()
    with pytest.raises(ModelUnavailable, match="timed out after 1 s; inference worker killed"):
        scorer.score(["hang"])
    assert time.monotonic() - started < 3.0
    assert scorer.killed == 1
    assert scorer.health()["status"] == "degraded"
    assert scorer.score(["ok"]).score == 0.25  # a fresh worker serves the next study
    assert scorer.health()["status"] == "ok"


def test_a_crashing_model_and_a_raising_model_fall_back(scorer: IsolatedScorer) -> None:
    with pytest.raises(ModelUnavailable, match="inference worker died"):
        scorer.score(["crash"])
    with pytest.raises(ModelUnavailable, match="ZeroDivisionError"):
        scorer.score(["raise"])
    assert scorer.killed == 1
    assert scorer.score(["ok"]).score == 0.25
