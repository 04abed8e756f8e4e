"""The demo pneumothorax model: logistic regression on pooled pixels, trained on synthetic phantoms.

Trained with numpy on phantoms preprocessed by the serving code (`dataset_to_tensor`), exported as a
small ONNX graph (AveragePool -> Flatten -> Gemm -> Sigmoid), checked against onnxruntime and
evaluated on held-out phantoms. It is a demonstration of the governed pipeline, not a diagnostic
model: the model card says so. The same recipe always gives the same ONNX bytes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from scoring.contract import CONTRACT_ARTIFACT, InputContract
from scoring.monitoring import reference_from
from scoring.phantoms import make_cxr_dataset
from scoring.preprocess import dataset_to_tensor

MODEL_NAME = "cxr-pneumothorax"
RECIPE = "cxr-pneumothorax-demo-1"
REVIEW_THRESHOLD = 0.8
INPUT_SIZE = 256
POOL = 16
TRAIN_COUNT = 600
HELD_OUT_COUNT = 200
TRAIN_SEED_BASE = 1_000_000
HELD_OUT_SEED_BASE = 2_000_000
L2_PENALTY = 1.0
OPSET = 17
IR_VERSION = 8  # opset 17 needs IR >= 8; pinned so the bytes do not follow the onnx release

DEMO_CONTRACT = InputContract(
    use_case="cxr-pneumothorax",
    input_name="image",
    height=INPUT_SIZE,
    width=INPUT_SIZE,
    label="pneumothorax",
    intensity="window",
)

Matrix = npt.NDArray[np.float64]

EVALUATION_DATA = f"""# Evaluation data: {MODEL_NAME} (demo)

{HELD_OUT_COUNT} synthetic chest X-ray phantoms from `scoring.phantoms` (seeds {HELD_OUT_SEED_BASE}
onwards, disjoint from the {TRAIN_COUNT} training seeds), half with a drawn pneumothorax. 256x256,
12-bit, MONOCHROME2, DX For Presentation. No patient data. Demo, not for clinical use.
"""


@dataclass(frozen=True, slots=True)
class DemoModel:
    """A built demo model: ONNX bytes, their SHA-256, contract, held-out metrics and model card."""

    onnx_bytes: bytes
    sha256: str
    contract: InputContract
    metrics: dict[str, float] = field(default_factory=dict)
    model_card: str = ""
    reference_json: str = ""  # held-out score and input distributions (drift monitoring)


@dataclass(frozen=True, slots=True)
class DemoFiles:
    """Where `write_demo_model` put the artifacts."""

    onnx_path: Path
    model_card_path: Path
    contract_path: Path


def phantom_tensors(seeds: Iterable[int], labels: Iterable[bool]) -> npt.NDArray[np.float32]:
    """Phantom tensors stacked as [N, 1, H, W], preprocessed exactly as the runner does."""
    tensors = [
        dataset_to_tensor(
            make_cxr_dataset(
                positive,
                seed=seed,
                patient_id=f"PHANTOM-{seed}",
                patient_name="PHANTOM^TRAINING",
                accession=f"PH{seed}",
            ),
            DEMO_CONTRACT,
        )
        for seed, positive in zip(seeds, labels, strict=True)
    ]
    return np.concatenate(tensors, axis=0)


def pooled_features(tensors: npt.NDArray[np.float32]) -> Matrix:
    """Non-overlapping POOL x POOL means, flattened: what AveragePool + Flatten compute."""
    n, _, h, w = tensors.shape
    blocks = tensors.reshape(n, h // POOL, POOL, w // POOL, POOL).astype(np.float64)
    return np.asarray(blocks.mean(axis=(2, 4)).reshape(n, -1), dtype=np.float64)


def _sigmoid(z: Matrix) -> Matrix:
    return np.asarray(1.0 / (1.0 + np.exp(-np.clip(z, -60.0, 60.0))), dtype=np.float64)


def train_logistic(features: Matrix, labels: npt.NDArray[np.float64]) -> tuple[Matrix, float]:
    """L2-penalised logistic regression by Newton's method on standardised features.

    Returns weights and bias for the raw features (standardisation folded in), so the graph
    needs no separate normalisation node.
    """
    mean = features.mean(axis=0)
    std = features.std(axis=0) + 1e-6
    x = np.hstack([(features - mean) / std, np.ones((features.shape[0], 1))])
    beta = np.zeros(x.shape[1])
    penalty = np.full(x.shape[1], L2_PENALTY)
    penalty[-1] = 0.0  # the bias is not shrunk
    for _ in range(50):
        p = _sigmoid(x @ beta)
        gradient = x.T @ (p - labels) + penalty * beta
        hessian = (x.T * (p * (1 - p))) @ x + np.diag(penalty)
        step = np.linalg.solve(hessian, gradient)
        beta = beta - step
        if float(np.abs(step).max()) < 1e-10:
            break
    weights = beta[:-1] / std
    bias = float(beta[-1] - np.dot(weights, mean))
    return weights, bias


def auroc(scores: Matrix, labels: npt.NDArray[np.bool_]) -> float:
    """Area under the ROC curve as the Mann-Whitney statistic (ties count one half)."""
    pos, neg = scores[labels], scores[~labels]
    if pos.size == 0 or neg.size == 0:
        raise ValueError("AUROC needs both classes")
    greater = (pos[:, None] > neg[None, :]).sum()
    ties = (pos[:, None] == neg[None, :]).sum()
    return float((greater + 0.5 * ties) / (pos.size * neg.size))


def threshold_metrics(
    scores: Matrix, labels: npt.NDArray[np.bool_], threshold: float
) -> dict[str, float]:
    """Precision, sensitivity and specificity of `score >= threshold`."""
    flagged = scores >= threshold
    tp = float((flagged & labels).sum())
    fp = float((flagged & ~labels).sum())
    fn = float((~flagged & labels).sum())
    tn = float((~flagged & ~labels).sum())
    return {
        "precision_at_review_threshold": tp / (tp + fp) if tp + fp else 0.0,
        "sensitivity_at_review_threshold": tp / (tp + fn) if tp + fn else 0.0,
        "specificity_at_review_threshold": tn / (tn + fp) if tn + fp else 0.0,
    }


def to_onnx(
    weights: Matrix,
    bias: float,
    contract: InputContract = DEMO_CONTRACT,
    *,
    graph_name: str = "cxr_pneumothorax_demo",
    recipe: str = RECIPE,
    batch: int | str = 1,
    pool: int = POOL,
) -> bytes:
    """ONNX graph: image -> AveragePool -> Flatten -> Gemm -> Sigmoid -> probability[N, 1].

    A string `batch` makes the batch dimension symbolic, so every slice of a series is scored
    in one run.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = np.asarray(weights, dtype=np.float32).reshape(1, -1)
    b = np.asarray([bias], dtype=np.float32)
    graph = helper.make_graph(
        [
            helper.make_node(
                "AveragePool",
                [contract.input_name],
                ["pooled"],
                kernel_shape=[pool, pool],
                strides=[pool, pool],
            ),
            helper.make_node("Flatten", ["pooled"], ["features"], axis=1),
            helper.make_node("Gemm", ["features", "weight", "bias"], ["logit"], transB=1),
            helper.make_node("Sigmoid", ["logit"], ["probability"]),
        ],
        graph_name,
        [
            helper.make_tensor_value_info(
                contract.input_name, TensorProto.FLOAT, [batch, *contract.shape[1:]]
            )
        ],
        [helper.make_tensor_value_info("probability", TensorProto.FLOAT, [batch, 1])],
        initializer=[numpy_helper.from_array(w, "weight"), numpy_helper.from_array(b, "bias")],
        doc_string=f"Demo {contract.label} classifier, synthetic phantoms only. "
        "Not for clinical use.",
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="hitl-gateway-demo",
        producer_version=recipe,
        ir_version=IR_VERSION,
    )
    helper.set_model_props(model, {"use_case": contract.use_case, "recipe": recipe})
    onnx.checker.check_model(model)
    data: bytes = model.SerializeToString(deterministic=True)
    return data


def _onnx_predict(
    onnx_bytes: bytes, tensors: npt.NDArray[np.float32], input_name: str = "image"
) -> Matrix:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])
    out = [session.run(None, {input_name: t[None]})[0].item() for t in tensors]
    return np.asarray(out, dtype=np.float64)


def model_card(metrics: dict[str, float], sha256: str) -> str:
    """The model card (markdown): purpose, data, method, held-out results, limits."""
    return f"""# Model card: {MODEL_NAME} (demo)

**Demo, not for clinical use.** This model has never seen a patient image. It exists to exercise
the gateway's governed human-in-the-loop pipeline end to end.

- Recipe: `{RECIPE}`; ONNX SHA-256 `{sha256}`
- Use case: chest X-ray (DX/CR, PA) pneumothorax flag; output `probability` [1, 1]
- Input contract: `{CONTRACT_ARTIFACT}` ({INPUT_SIZE}x{INPUT_SIZE}, one channel, DICOM VOI window
  from the header, MONOCHROME1 inverted, scaled to [0, 1])
- Method: logistic regression (L2 {L2_PENALTY}) on {POOL}x{POOL} average-pooled pixels, fitted
  with numpy; graph AveragePool -> Flatten -> Gemm -> Sigmoid (opset {OPSET})

## Data
Synthetic phantoms from `scoring.phantoms`: {TRAIN_COUNT} for training, {HELD_OUT_COUNT} held out
(disjoint seeds), half with a pneumothorax drawn as a dark crescent without lung markings.

## Held-out results (review threshold {REVIEW_THRESHOLD})
| metric | value |
|---|---|
| AUROC | {metrics["auroc"]:.4f} |
| precision | {metrics["precision_at_review_threshold"]:.4f} |
| sensitivity | {metrics["sensitivity_at_review_threshold"]:.4f} |
| specificity | {metrics["specificity_at_review_threshold"]:.4f} |
| held-out studies | {int(metrics["held_out_count"])} |

## Limits
The phantoms are far simpler than radiographs; these figures say nothing about real images.
No bias report applies: there are no patients or subgroups in the data.
"""


def build_demo_model() -> DemoModel:
    """Train, export, verify against onnxruntime and evaluate the demo model (a few seconds)."""
    train_seeds = range(TRAIN_SEED_BASE, TRAIN_SEED_BASE + TRAIN_COUNT)
    train_labels = np.asarray([s % 2 == 1 for s in train_seeds])
    held_seeds = range(HELD_OUT_SEED_BASE, HELD_OUT_SEED_BASE + HELD_OUT_COUNT)
    held_labels = np.asarray([s % 2 == 1 for s in held_seeds])

    train = phantom_tensors(train_seeds, train_labels)
    weights, bias = train_logistic(pooled_features(train), train_labels.astype(np.float64))
    # Rounding to float32 before export and prediction keeps the bytes stable and makes the
    # numpy check use exactly the parameters the graph holds.
    weights = np.asarray(weights, dtype=np.float32).astype(np.float64)
    bias = float(np.float32(bias))
    onnx_bytes = to_onnx(weights, bias)

    held = phantom_tensors(held_seeds, held_labels)
    expected = _sigmoid(pooled_features(held) @ weights + bias)
    served = _onnx_predict(onnx_bytes, held)
    if not np.allclose(served, expected, atol=1e-4):
        raise RuntimeError("onnxruntime output differs from the numpy model")

    metrics = {"auroc": auroc(served, held_labels)}
    metrics.update(threshold_metrics(served, held_labels, REVIEW_THRESHOLD))
    metrics["held_out_count"] = float(HELD_OUT_COUNT)
    metrics["review_threshold"] = REVIEW_THRESHOLD
    sha = hashlib.sha256(onnx_bytes).hexdigest()
    reference = reference_from(list(served), [float(t.mean()) for t in held])
    return DemoModel(
        onnx_bytes, sha, DEMO_CONTRACT, metrics, model_card(metrics, sha), reference.to_json()
    )


def write_demo_model(model: DemoModel, directory: Path) -> DemoFiles:
    """Write model.onnx, model_card.md and input_contract.json into `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    files = DemoFiles(
        directory / "model.onnx", directory / "model_card.md", directory / CONTRACT_ARTIFACT
    )
    files.onnx_path.write_bytes(model.onnx_bytes)
    files.model_card_path.write_text(model.model_card, encoding="utf-8")
    files.contract_path.write_text(model.contract.to_json(), encoding="utf-8")
    return files
