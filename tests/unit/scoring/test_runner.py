"""The onnxruntime scorer behind the StudyScorer port: scores, refusals, promotions, threads."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import pytest

from gateway.domain.errors import ModelUnavailable
from gateway.ports import StudyScorer
from scoring.demo_model import DEMO_CONTRACT, REVIEW_THRESHOLD, DemoModel
from scoring.phantoms import write_cxr_file
from scoring.preprocess import load_cxr_tensor, tensor_hash
from scoring.registry import ModelRegistry, ResolvedModel
from scoring.runner import OnnxStudyScorer

NAME = "cxr-pneumothorax"


class Clock:
    """A hand-moved monotonic clock."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def served(registry: ModelRegistry, demo_model: DemoModel, demo_onnx: Path) -> ModelRegistry:
    """A registry whose production alias points at the demo model."""
    version = registry.register_onnx(
        NAME, demo_onnx, DEMO_CONTRACT, demo_model.metrics, demo_model.model_card
    )
    registry.set_alias(NAME, "production", version)
    return registry


def _study(tmp_path: Path, positive: bool, seed: int, **kwargs: object) -> list[str]:
    path = tmp_path / f"{'pos' if positive else 'neg'}-{seed}.dcm"
    write_cxr_file(
        path,
        positive,
        seed=seed,
        patient_id="P",
        patient_name="Doe^J",
        accession="A",
        **kwargs,  # type: ignore[arg-type]
    )
    return [str(path)]


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("kwargs", [{}, {"photometric": "MONOCHROME1", "rows": 512}])
def test_positive_phantom_flags_and_negative_does_not(
    served: ModelRegistry, tmp_path: Path, seed: int, kwargs: dict[str, object]
) -> None:
    scorer = OnnxStudyScorer(served, NAME, "production")
    positive = scorer.score(_study(tmp_path, True, seed, **kwargs))
    negative = scorer.score(_study(tmp_path, False, seed, **kwargs))
    assert positive.score >= REVIEW_THRESHOLD
    assert negative.score < REVIEW_THRESHOLD


def test_output_records_model_and_input_hash(
    served: ModelRegistry, demo_model: DemoModel, tmp_path: Path
) -> None:
    scorer: StudyScorer = OnnxStudyScorer(served, NAME)
    paths = _study(tmp_path, True, 9)
    out = scorer.score(paths)
    assert (out.model.name, out.model.version, out.model.sha256) == (NAME, "1", demo_model.sha256)
    assert out.model.use_case == "cxr-pneumothorax"
    assert out.label == "pneumothorax"
    assert out.input_hash == tensor_hash(load_cxr_tensor(paths, DEMO_CONTRACT))
    assert scorer.describe() == {
        "status": "ok",
        "model": NAME,
        "alias": "production",
        "version": "1",
        "sha256": demo_model.sha256,
        "use_case": "cxr-pneumothorax",
    }


def test_no_production_version_is_unavailable(registry: ModelRegistry, tmp_path: Path) -> None:
    scorer = OnnxStudyScorer(registry, NAME)
    with pytest.raises(ModelUnavailable, match="no version under alias"):
        scorer.score(_study(tmp_path, True, 1))
    facts = scorer.describe()
    assert facts["status"] == "unavailable"
    assert "alias" in facts["reason"]


def test_promotion_is_picked_up_after_the_refresh_interval(
    served: ModelRegistry, demo_model: DemoModel, demo_onnx: Path, tmp_path: Path
) -> None:
    clock = Clock()
    scorer = OnnxStudyScorer(served, NAME, refresh_seconds=30, clock=clock)
    assert scorer.score(_study(tmp_path, True, 1)).model.version == "1"
    v2 = served.register_onnx(NAME, demo_onnx, DEMO_CONTRACT, {}, demo_model.model_card)
    served.set_alias(NAME, "production", v2)
    clock.now = 29
    assert scorer.describe()["version"] == "1"
    clock.now = 30
    assert scorer.score(_study(tmp_path, True, 1)).model.version == "2"


def test_tampered_file_stops_scoring_at_the_next_refresh(
    served: ModelRegistry, tmp_path: Path
) -> None:
    clock = Clock()
    scorer = OnnxStudyScorer(served, NAME, refresh_seconds=5, clock=clock)
    scorer.score(_study(tmp_path, True, 1))
    path = served.resolve(NAME).local_path
    path.write_bytes(path.read_bytes()[:-1] + b"\1")
    clock.now = 5
    with pytest.raises(ModelUnavailable, match="SHA-256"):
        scorer.score(_study(tmp_path, True, 1))
    assert scorer.describe()["status"] == "unavailable"


class SwapAfterResolve(ModelRegistry):
    """Swaps the model file between the registry check and the runner's read."""

    def resolve(self, name: str, alias: str = "production") -> ResolvedModel:
        resolved = super().resolve(name, alias)
        resolved.local_path.write_bytes(b"not the registered model")
        return resolved


def test_bytes_loaded_are_the_bytes_checked(served: ModelRegistry, tmp_path: Path) -> None:
    swapping = SwapAfterResolve(served.tracking_uri)
    with pytest.raises(ModelUnavailable, match="loaded bytes hash to"):
        OnnxStudyScorer(swapping, NAME).score(_study(tmp_path, True, 1))


def test_unreadable_study_is_unavailable_not_a_crash(served: ModelRegistry, tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.dcm"
    bogus.write_bytes(b"DICM? no")
    with pytest.raises(ModelUnavailable, match="failed"):
        OnnxStudyScorer(served, NAME).score([str(bogus)])


def test_contract_naming_a_missing_input_is_unavailable(
    served: ModelRegistry, demo_model: DemoModel, demo_onnx: Path
) -> None:
    wrong = replace(DEMO_CONTRACT, input_name="pixels")
    v2 = served.register_onnx(NAME, demo_onnx, wrong, {}, demo_model.model_card)
    served.set_alias(NAME, "production", v2)
    facts = OnnxStudyScorer(served, NAME).describe()
    assert facts["status"] == "unavailable"
    assert "no input 'pixels'" in facts["reason"]


def test_concurrent_scoring_from_worker_threads(served: ModelRegistry, tmp_path: Path) -> None:
    scorer = OnnxStudyScorer(served, NAME, refresh_seconds=0)
    studies = [_study(tmp_path, seed % 2 == 0, seed) for seed in range(8)]
    with ThreadPoolExecutor(max_workers=4) as pool:
        outputs = list(pool.map(scorer.score, studies))
    flagged = [o.score >= REVIEW_THRESHOLD for o in outputs]
    assert flagged == [seed % 2 == 0 for seed in range(8)]
    assert {o.model.version for o in outputs} == {"1"}


def test_every_image_of_the_study_is_scored_and_the_highest_counts(
    served: ModelRegistry, tmp_path: Path
) -> None:
    from scoring.preprocess import load_radiographs

    negative = _study(tmp_path, False, 21, instance_number=1)
    positive = _study(tmp_path, True, 22, instance_number=2)
    scorer = OnnxStudyScorer(served, NAME)
    both = scorer.score(negative + positive)
    assert both.score == scorer.score(positive).score
    assert both.score >= REVIEW_THRESHOLD
    assert both.input_hash == tensor_hash(load_radiographs(negative + positive, DEMO_CONTRACT))
    assert both.input_hash != scorer.score(positive).input_hash
