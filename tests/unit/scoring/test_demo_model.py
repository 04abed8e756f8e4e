"""The demo model: deterministic bytes, held-out metrics, a model card that says what it is."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from scoring.demo_model import (
    DEMO_CONTRACT,
    REVIEW_THRESHOLD,
    DemoModel,
    auroc,
    build_demo_model,
    threshold_metrics,
)


def test_two_builds_give_the_same_onnx_bytes(demo_model: DemoModel) -> None:
    again = build_demo_model()
    assert again.sha256 == demo_model.sha256
    assert hashlib.sha256(again.onnx_bytes).hexdigest() == demo_model.sha256
    assert again.metrics == demo_model.metrics


def test_held_out_metrics_are_high(demo_model: DemoModel) -> None:
    m = demo_model.metrics
    assert m["auroc"] >= 0.98
    assert m["precision_at_review_threshold"] >= 0.95
    assert m["sensitivity_at_review_threshold"] >= 0.95
    assert m["held_out_count"] == 200
    assert m["review_threshold"] == REVIEW_THRESHOLD


def test_model_card_labels_the_demo(demo_model: DemoModel) -> None:
    card = demo_model.model_card.lower()
    assert "demo, not for clinical use" in card
    assert demo_model.sha256 in card
    assert f"{demo_model.metrics['auroc']:.4f}" in card


def test_graph_matches_the_contract(demo_model: DemoModel) -> None:
    import onnx

    model = onnx.load_from_string(demo_model.onnx_bytes)
    assert [n.op_type for n in model.graph.node] == ["AveragePool", "Flatten", "Gemm", "Sigmoid"]
    assert model.opset_import[0].version == 17
    (graph_input,) = model.graph.input
    dims = [d.dim_value for d in graph_input.type.tensor_type.shape.dim]
    assert (graph_input.name, tuple(dims)) == (DEMO_CONTRACT.input_name, DEMO_CONTRACT.shape)


def test_auroc_counts_ties_as_one_half() -> None:
    labels = np.array([True, True, False, False])
    assert auroc(np.array([0.9, 0.8, 0.1, 0.2]), labels) == 1.0
    assert auroc(np.array([0.1, 0.2, 0.9, 0.8]), labels) == 0.0
    assert auroc(np.array([0.5, 0.5, 0.5, 0.5]), labels) == 0.5
    with pytest.raises(ValueError, match="both classes"):
        auroc(np.array([0.5]), np.array([True]))


def test_threshold_metrics() -> None:
    scores = np.array([0.9, 0.85, 0.7, 0.95, 0.1])
    labels = np.array([True, True, True, False, False])
    m = threshold_metrics(scores, labels, 0.8)
    assert m["precision_at_review_threshold"] == pytest.approx(2 / 3)
    assert m["sensitivity_at_review_threshold"] == pytest.approx(2 / 3)
    assert m["specificity_at_review_threshold"] == pytest.approx(1 / 2)
