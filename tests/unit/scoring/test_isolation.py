"""Inference in killable child processes: hang, crash and error each give ModelUnavailable.

Children start when a study needs one and stop after their idle time; the version to run is the
one the gateway process resolved, sent with each study.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from gateway.domain.errors import ModelUnavailable
from gateway.domain.model import ModelIdentity
from gateway.ports import ModelOutput
from scoring.demo_model import DEMO_CONTRACT, DemoModel
from scoring.isolation import IsolatedScorer, ScorerSpec
from scoring.model_session import SentModelScorer
from scoring.phantoms import write_cxr_file
from scoring.registry import ModelRegistry
from scoring.runner import OnnxStudyScorer
from tests.unit.scoring.isolation_fakes import fake_scorer, product_scorer_reporting_modules

SERVED = ModelIdentity("served", "3", "c" * 64)
NAME = "cxr-pneumothorax"


@pytest.fixture
def served_registry(
    registry: ModelRegistry, demo_model: DemoModel, demo_onnx: Path
) -> ModelRegistry:
    """A registry whose production alias points at the demo model."""
    version = registry.register_onnx(
        NAME, demo_onnx, DEMO_CONTRACT, demo_model.metrics, demo_model.model_card
    )
    registry.set_alias(NAME, "production", version)
    return registry


class _Parent:
    def __init__(self) -> None:
        self.observed: list[tuple[ModelOutput, float]] = []
        self.served: ModelIdentity | None = SERVED

    def describe(self) -> dict[str, str]:
        return {"status": "ok"}

    def served_model(self) -> ModelIdentity:
        if self.served is None:
            raise ModelUnavailable("no version under alias 'production'")
        return self.served

    def observe(self, output: ModelOutput, input_mean: float) -> None:
        self.observed.append((output, input_mean))


@pytest.fixture
def parent() -> _Parent:
    """The in-process side: resolution, readiness and drift monitoring."""
    return _Parent()


MakeScorer = Callable[..., IsolatedScorer]


@pytest.fixture
def make_scorer(parent: _Parent) -> Iterator[MakeScorer]:
    """Isolated scorers with fake children, closed after the test."""
    made: list[IsolatedScorer] = []

    def make(**kwargs: object) -> IsolatedScorer:
        options: dict[str, object] = {"workers": 1, "deadline_seconds": 1.0, "factory": fake_scorer}
        options.update(kwargs)
        isolated = IsolatedScorer(ScorerSpec(), parent, **options)  # type: ignore[arg-type]
        made.append(isolated)
        return isolated

    yield make
    for isolated in made:
        isolated.close()


@pytest.fixture
def scorer(make_scorer: MakeScorer) -> IsolatedScorer:
    """One child worker with a one-second deadline."""
    return make_scorer()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A reaped child is gone; an unreaped zombie would still answer the signal.
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().split()[2] != "Z"


def test_scores_the_version_the_parent_resolved_and_feeds_monitoring(
    scorer: IsolatedScorer, parent: _Parent
) -> None:
    output = scorer.score(["ok"])
    assert (output.model, output.score) == (SERVED, 0.25)
    assert parent.observed == [(output, 0.5)]


def test_nothing_is_sent_to_a_child_when_the_parent_serves_no_version(
    scorer: IsolatedScorer, parent: _Parent
) -> None:
    parent.served = None
    with pytest.raises(ModelUnavailable, match="no version under alias"):
        scorer.score(["ok"])
    assert scorer.health()["started"] == 0


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


def test_no_child_runs_until_a_study_needs_one(scorer: IsolatedScorer) -> None:
    assert (scorer.health()["running"], scorer.health()["started"]) == (0, 0)
    first = int(scorer.score(["pid"]).input_hash)
    second = int(scorer.score(["pid"]).input_hash)
    assert first == second  # the warm child is reused
    assert (scorer.health()["running"], scorer.health()["started"]) == (1, 1)


def test_an_idle_child_is_stopped_and_the_next_study_starts_a_new_one(
    make_scorer: MakeScorer,
) -> None:
    scorer = make_scorer(idle_seconds=0.3, deadline_seconds=20.0)
    first = int(scorer.score(["pid"]).input_hash)
    deadline = time.monotonic() + 10
    while (scorer.health()["running"] or _alive(first)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert scorer.health()["running"] == 0
    assert scorer.health()["stopped_idle"] == 1
    assert not _alive(first)
    second = int(scorer.score(["pid"]).input_hash)
    assert second != first
    assert scorer.health()["started"] == 2


def test_with_no_idle_stop_children_start_with_the_scorer_and_stay(
    make_scorer: MakeScorer,
) -> None:
    scorer = make_scorer(workers=2, idle_seconds=0)
    assert (scorer.health()["running"], scorer.health()["idle"]) == (2, 2)
    time.sleep(0.3)
    assert scorer.health()["running"] == 2
    scorer.score(["ok"])
    assert scorer.health()["started"] == 2


def test_workers_bound_the_children_and_a_study_waits_for_a_free_one(
    make_scorer: MakeScorer,
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    scorer = make_scorer(workers=2, deadline_seconds=20.0)
    with ThreadPoolExecutor(6) as pool:
        pids = {int(o.input_hash) for o in pool.map(lambda _: scorer.score(["pid"]), range(12))}
    assert 1 <= len(pids) <= 2
    assert scorer.started <= 2


def test_close_stops_every_child(make_scorer: MakeScorer) -> None:
    scorer = make_scorer()
    pid = int(scorer.score(["pid"]).input_hash)
    scorer.close()
    assert not _alive(pid)
    with pytest.raises(ModelUnavailable):
        scorer.score(["ok"])


def test_the_product_child_scores_the_sent_version_without_mlflow(
    served_registry: ModelRegistry, tmp_path: Path
) -> None:
    in_process = OnnxStudyScorer(served_registry, NAME)
    verifying = OnnxStudyScorer(served_registry, NAME, sessions=False)
    path = tmp_path / "pos.dcm"
    write_cxr_file(path, True, seed=4, patient_id="P", patient_name="Doe^J", accession="A")
    study = [str(path)]
    isolated = IsolatedScorer(
        ScorerSpec(),
        verifying,
        deadline_seconds=60.0,
        factory=product_scorer_reporting_modules,
    )
    try:
        output = isolated.score(study)
    finally:
        isolated.close()
    expected = in_process.score(study)
    assert (output.score, output.model, output.input_hash) == (
        expected.score,
        expected.model,
        expected.input_hash,
    )
    assert output.label == ""  # the child imported neither MLflow nor the gateway's stack


def test_the_child_refuses_a_sent_version_whose_file_changed(
    served_registry: ModelRegistry, tmp_path: Path
) -> None:
    resolved = OnnxStudyScorer(served_registry, NAME, sessions=False).served_model()
    copy = tmp_path / "model.onnx"
    copy.write_bytes(resolved.local_path.read_bytes() + b"tampered")
    scorer = SentModelScorer()
    with pytest.raises(ModelUnavailable, match="refusing them"):
        scorer.score_with_statistic(replace(resolved, local_path=copy), ["unused"])
