"""The demo head CT haemorrhage model: per-slice logistic regression, study score = max over slices.

Trained with numpy on slices of synthetic phantom series preprocessed by the serving code (HU
brain window 40/80), exported with a symbolic batch dimension so a whole series is one run,
and evaluated per study on held-out phantoms. Demonstration only: the model card says so.
"""

from __future__ import annotations

import hashlib

import numpy as np
import numpy.typing as npt

from scoring.contract import CONTRACT_ARTIFACT, InputContract
from scoring.ct_phantoms import make_ct_series
from scoring.demo_model import (
    IR_VERSION,
    OPSET,
    REVIEW_THRESHOLD,
    DemoModel,
    Matrix,
    _onnx_predict,
    _sigmoid,
    auroc,
    threshold_metrics,
    train_logistic,
)
from scoring.monitoring import reference_from
from scoring.preprocess import dataset_to_tensor

MODEL_NAME = "ct-haemorrhage"
RECIPE = "ct-haemorrhage-demo-1"
INPUT_SIZE = 64
SLICES = 16
TRAIN_STUDIES = 60
HELD_OUT_STUDIES = 40
TRAIN_SEED_BASE = 3_000_000
HELD_OUT_SEED_BASE = 4_000_000

CT_CONTRACT = InputContract(
    use_case="ct-haemorrhage",
    input_name="slices",
    height=INPUT_SIZE,
    width=INPUT_SIZE,
    label="intracranial-haemorrhage",
    intensity="window",
    window_center=40.0,
    window_width=80.0,
    aggregation="max",
)

EVALUATION_DATA = f"""# Evaluation data: {MODEL_NAME} (demo)

{HELD_OUT_STUDIES} synthetic non-contrast head CT phantom studies from `scoring.ct_phantoms`
(seeds {HELD_OUT_SEED_BASE} onwards, disjoint from the {TRAIN_STUDIES} training studies), half
with a drawn haemorrhage; {SLICES} axial 5 mm slices of {INPUT_SIZE}x{INPUT_SIZE} each. Metrics
are per study (maximum slice probability). No patient data. Demo, not for clinical use.
"""


def _study(seed: int) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.bool_], bool]:
    """Slices [S, 1, H, W], per-slice labels and the study label of one phantom."""
    positive = seed % 2 == 1
    series = make_ct_series(positive, seed=seed, patient_id=f"CT{seed}", accession=f"CT{seed}")
    negative = make_ct_series(False, seed=seed, patient_id=f"CT{seed}", accession=f"CT{seed}")
    tensors = np.concatenate([dataset_to_tensor(ds, CT_CONTRACT) for ds in series], axis=0)
    clean = np.concatenate([dataset_to_tensor(ds, CT_CONTRACT) for ds in negative], axis=0)
    # A slice is positive where the bleed changed the brain-window image noticeably.
    lo, hi = CROP
    diff = np.abs(tensors - clean)[:, :, lo:hi, lo:hi]
    changed = (diff > 0.2).reshape(len(series), -1).sum(axis=1) > CELL * CELL
    return tensors, changed, positive


CROP = (20, 44)  # the central field, inside the skull of every phantom
CELL = 4


def _pooled(tensors: npt.NDArray[np.float32]) -> Matrix:
    """Per slice: the brightest CELLxCELL mean in the central field (what the graph computes)."""
    lo, hi = CROP
    crop = tensors[:, :, lo:hi, lo:hi]
    n, _, h, w = crop.shape
    blocks = crop.reshape(n, h // CELL, CELL, w // CELL, CELL).astype(np.float64).mean(axis=(2, 4))
    return np.asarray(blocks.reshape(n, -1).max(axis=1, keepdims=True), dtype=np.float64)


def to_ct_onnx(weights: Matrix, bias: float) -> bytes:
    """slices -> Slice (central field) -> AveragePool -> GlobalMaxPool -> Gemm -> Sigmoid."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    lo, hi = CROP
    init = [
        numpy_helper.from_array(np.asarray([lo, lo], dtype=np.int64), "crop_start"),
        numpy_helper.from_array(np.asarray([hi, hi], dtype=np.int64), "crop_end"),
        numpy_helper.from_array(np.asarray([2, 3], dtype=np.int64), "crop_axes"),
        numpy_helper.from_array(np.asarray(weights, dtype=np.float32).reshape(1, -1), "weight"),
        numpy_helper.from_array(np.asarray([bias], dtype=np.float32), "bias"),
    ]
    name = CT_CONTRACT.input_name
    graph = helper.make_graph(
        [
            helper.make_node("Slice", [name, "crop_start", "crop_end", "crop_axes"], ["field"]),
            helper.make_node(
                "AveragePool", ["field"], ["cells"], kernel_shape=[CELL, CELL], strides=[CELL, CELL]
            ),
            helper.make_node("GlobalMaxPool", ["cells"], ["brightest"]),
            helper.make_node("Flatten", ["brightest"], ["features"], axis=1),
            helper.make_node("Gemm", ["features", "weight", "bias"], ["logit"], transB=1),
            helper.make_node("Sigmoid", ["logit"], ["probability"]),
        ],
        "ct_haemorrhage_demo",
        [
            helper.make_tensor_value_info(
                name, TensorProto.FLOAT, ["slices", *CT_CONTRACT.shape[1:]]
            )
        ],
        [helper.make_tensor_value_info("probability", TensorProto.FLOAT, ["slices", 1])],
        initializer=init,
        doc_string="Demo haemorrhage classifier, synthetic phantoms only. Not for clinical use.",
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="hitl-gateway-demo",
        producer_version=RECIPE,
        ir_version=IR_VERSION,
    )
    helper.set_model_props(model, {"use_case": CT_CONTRACT.use_case, "recipe": RECIPE})
    onnx.checker.check_model(model)
    data: bytes = model.SerializeToString(deterministic=True)
    return data


def model_card(metrics: dict[str, float], sha256: str) -> str:
    """The model card (markdown)."""
    return f"""# Model card: {MODEL_NAME} (demo)

**Demo, not for clinical use.** This model has never seen a patient image.

- Recipe: `{RECIPE}`; ONNX SHA-256 `{sha256}`
- Use case: non-contrast head CT, intracranial haemorrhage flag
- Input contract: `{CONTRACT_ARTIFACT}`: every slice of the selected axial series, sorted along
  the slice normal, HU window 40/80, {INPUT_SIZE}x{INPUT_SIZE}; study score = max over slices
- Method: logistic regression (numpy) on one feature per slice, the brightest {CELL}x{CELL} mean
  in the central field; graph Slice -> AveragePool -> GlobalMaxPool -> Gemm -> Sigmoid with a
  symbolic batch dimension

## Held-out results per study (review threshold {REVIEW_THRESHOLD})
| metric | value |
|---|---|
| AUROC | {metrics["auroc"]:.4f} |
| precision | {metrics["precision_at_review_threshold"]:.4f} |
| sensitivity | {metrics["sensitivity_at_review_threshold"]:.4f} |
| held-out studies | {int(metrics["held_out_count"])} |

## Limits
Phantoms are geometric shapes with noise; the figures say nothing about real CT.
"""


def build_ct_demo_model() -> DemoModel:
    """Train, export, verify and evaluate the CT demo model (a few seconds)."""
    train = [_study(s) for s in range(TRAIN_SEED_BASE, TRAIN_SEED_BASE + TRAIN_STUDIES)]
    features = _pooled(np.concatenate([t for t, _, _ in train], axis=0))
    labels = np.concatenate([lab for _, lab, _ in train]).astype(np.float64)
    weights, bias = train_logistic(features, labels)
    weights = np.asarray(weights, dtype=np.float32).astype(np.float64)
    bias = float(np.float32(bias))
    onnx_bytes = to_ct_onnx(weights, bias)
    held = [_study(s) for s in range(HELD_OUT_SEED_BASE, HELD_OUT_SEED_BASE + HELD_OUT_STUDIES)]
    served, means = [], []
    for tensors, _, _ in held:
        means.append(float(tensors.mean()))
        expected = _sigmoid(_pooled(tensors) @ weights + bias)
        per_slice = _onnx_predict(onnx_bytes, tensors, CT_CONTRACT.input_name)
        if not np.allclose(per_slice, expected, atol=1e-4):
            raise RuntimeError("onnxruntime output differs from the numpy model")
        served.append(float(per_slice.max()))
    scores = np.asarray(served, dtype=np.float64)
    truth = np.asarray([positive for _, _, positive in held])
    metrics = {"auroc": auroc(scores, truth)}
    metrics.update(threshold_metrics(scores, truth, REVIEW_THRESHOLD))
    metrics["held_out_count"] = float(HELD_OUT_STUDIES)
    metrics["review_threshold"] = REVIEW_THRESHOLD
    sha = hashlib.sha256(onnx_bytes).hexdigest()
    reference = reference_from(served, means).to_json()
    return DemoModel(onnx_bytes, sha, CT_CONTRACT, metrics, model_card(metrics, sha), reference)
