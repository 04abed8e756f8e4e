"""Drift monitoring: PSI against the validation reference, flags and gauge samples."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gateway.domain.errors import InvalidInput
from gateway.domain.model import ModelIdentity
from scoring.demo_model import DemoModel
from scoring.monitoring import (
    DriftMonitor,
    ValidationReference,
    fractions,
    psi,
    reference_from,
)

MODEL = ModelIdentity("m", "1", "0" * 64, use_case="cxr-pneumothorax")


def test_psi_matches_the_formula() -> None:
    expected, actual = [0.5, 0.5], [0.25, 0.75]
    by_hand = (0.25 - 0.5) * math.log(0.25 / 0.5) + (0.75 - 0.5) * math.log(0.75 / 0.5)
    assert psi(expected, actual) == pytest.approx(by_hand)
    assert psi(expected, expected) == 0.0


def test_fractions_put_outliers_in_the_end_bins() -> None:
    assert fractions([-1.0, 0.05, 0.95, 2.0], (0.0, 0.5, 1.0)) == [0.5, 0.5]


def test_reference_round_trips_and_rejects_bad_json() -> None:
    rng = np.random.default_rng(0)
    reference = reference_from(list(rng.uniform(size=200)), list(rng.normal(size=200)))
    assert ValidationReference.from_json(reference.to_json()).score_edges == reference.score_edges
    with pytest.raises(InvalidInput):
        ValidationReference.from_json('{"score_edges": [0, 1]}')


def test_same_population_is_stable_and_a_shift_is_flagged() -> None:
    rng = np.random.default_rng(1)
    reference = reference_from(list(rng.beta(2, 5, 1000)), list(rng.normal(0.4, 0.05, 1000)))
    monitor = DriftMonitor(level=0.2, window=300, min_samples=300)
    monitor.set_reference(MODEL, reference.to_json())
    for score, mean in zip(rng.beta(2, 5, 299), rng.normal(0.4, 0.05, 299), strict=True):
        monitor.observe(MODEL, float(score), float(mean))
    assert monitor.facts()[0].score_psi is None  # too few studies yet
    monitor.observe(MODEL, 0.2, 0.4)
    stable = monitor.facts()[0]
    assert stable.score_psi is not None
    assert stable.score_psi < 0.1
    assert not stable.flagged

    # With few studies PSI over ten bins is noise of about (bins - 1) / n, hence min_samples.
    # The scanner changed: inputs brighter, scores pushed up.
    for score, mean in zip(rng.beta(5, 2, 300), rng.normal(0.6, 0.05, 300), strict=True):
        monitor.observe(MODEL, float(score), float(mean))
    shifted = monitor.facts()[0]
    assert shifted.flagged
    assert shifted.input_psi is not None
    assert shifted.input_psi > 0.2
    flags = list(monitor.flag_samples())
    assert flags == [({"use_case": "cxr-pneumothorax", "model": "m", "version": "1"}, 1.0)]
    assert {labels["signal"] for labels, _ in monitor.samples()} == {"score", "input"}


def test_demo_model_carries_its_validation_reference(demo_model: DemoModel) -> None:
    reference = ValidationReference.from_json(demo_model.reference_json)
    assert sum(reference.score_fractions) == pytest.approx(1.0)
    assert sum(reference.input_fractions) == pytest.approx(1.0)
