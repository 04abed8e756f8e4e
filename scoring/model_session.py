"""One verified ONNX session and the scoring of a study with it, free of any registry access.

The session is built from the very bytes whose SHA-256 was compared with the registered hash, so
a file swapped between check and load is never run. An inference child process imports only this
(with numpy, pydicom and onnxruntime): the served version is resolved by the gateway process and
sent with each study, so MLflow is loaded once, not once per worker.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from gateway.domain.errors import GatewayError, ModelUnavailable
from gateway.ports import ModelOutput
from scoring.ct import load_ct_volume
from scoring.preprocess import load_radiographs, tensor_hash
from scoring.registry import ResolvedModel


@dataclass(frozen=True, slots=True)
class LoadedModel:
    """A resolved version and, unless only verified, its onnxruntime session."""

    model: ResolvedModel
    session: Any
    output_name: str
    batched: bool = False


def verified_bytes(resolved: ResolvedModel) -> bytes:
    """The model file's bytes, refused unless they hash to the registered SHA-256."""
    try:
        data = resolved.local_path.read_bytes()
    except OSError as exc:
        raise ModelUnavailable(f"cannot read {resolved.local_path}: {exc}") from exc
    actual = hashlib.sha256(data).hexdigest()
    if actual != resolved.sha256:
        raise ModelUnavailable(
            f"{resolved.name} v{resolved.version}: loaded bytes hash to {actual}, "
            f"registered {resolved.sha256}; refusing them"
        )
    return data


def load_model_session(resolved: ResolvedModel, intra_op_threads: int = 1) -> LoadedModel:
    """An onnxruntime session of the verified bytes, checked against the input contract."""
    data = verified_bytes(resolved)
    try:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        inputs = {i.name: i for i in session.get_inputs()}
        if resolved.contract.input_name not in inputs:
            raise ModelUnavailable(
                f"{resolved.name} v{resolved.version} has no input "
                f"{resolved.contract.input_name!r} (has {sorted(inputs)})"
            )
        output_name = str(session.get_outputs()[0].name)
    except GatewayError:
        raise
    except Exception as exc:
        raise ModelUnavailable(
            f"onnxruntime cannot load {resolved.name} v{resolved.version}: {exc}"
        ) from exc
    batched = not isinstance(session.get_inputs()[0].shape[0], int)
    return LoadedModel(resolved, session, output_name, batched)


def _probability(raw: npt.NDArray[np.float32], transform: str, index: int) -> float:
    values = np.asarray(raw, dtype=np.float64).reshape(-1)
    if index >= values.size:
        raise ModelUnavailable(f"model output has {values.size} values, contract asks for #{index}")
    if transform == "sigmoid":
        values = 1.0 / (1.0 + np.exp(-values))
    elif transform == "softmax":
        shifted = np.exp(values - values.max())
        values = shifted / shifted.sum()
    score = float(values[index])
    if not math.isfinite(score) or not 0.0 <= score <= 1.0:
        raise ModelUnavailable(f"model output {score!r} is not a probability")
    return score


def _run_slices(
    loaded: LoadedModel, input_name: str, tensor: npt.NDArray[np.float32]
) -> list[npt.NDArray[np.float32]]:
    """Per-slice raw outputs: one run when the batch dimension is symbolic, else one per slice."""
    if loaded.batched:
        out = np.asarray(loaded.session.run([loaded.output_name], {input_name: tensor})[0])
        return [out[i] for i in range(out.shape[0])]
    return [
        np.asarray(loaded.session.run([loaded.output_name], {input_name: tensor[i : i + 1]})[0])
        for i in range(tensor.shape[0])
    ]


def _aggregate(scores: Sequence[float], how: str) -> float:
    """The study score from per-slice probabilities."""
    if not scores:
        raise ModelUnavailable("no slice was scored")
    return max(scores) if how == "max" else float(sum(scores) / len(scores))


def score_study(loaded: LoadedModel, instance_paths: Sequence[str]) -> tuple[ModelOutput, float]:
    """The study's score and the mean of the model input (the drift input statistic)."""
    if loaded.session is None:
        raise ModelUnavailable(f"{loaded.model.name} v{loaded.model.version} is verified only")
    contract = loaded.model.contract
    try:
        if contract.aggregation == "none":
            # Projection images: each routed image is scored, the study takes the highest.
            tensor = load_radiographs(instance_paths, contract)
            how = "max"
        else:
            tensor = load_ct_volume(instance_paths, contract)
            how = contract.aggregation
        score = _aggregate(
            [
                _probability(raw, contract.output_transform, contract.output_index)
                for raw in _run_slices(loaded, contract.input_name, tensor)
            ],
            how,
        )
    except GatewayError:
        raise
    except Exception as exc:
        # The port's contract: decoding or runtime failures are a fallback, never a crash.
        raise ModelUnavailable(
            f"scoring with {loaded.model.name} v{loaded.model.version} failed: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    output = ModelOutput(
        score=score,
        model=loaded.model.identity(),
        input_hash=tensor_hash(tensor),
        label=contract.label,
    )
    return output, float(tensor.mean())


class SentModelScorer:
    """An inference child's scorer: the version to run comes with each study from the gateway."""

    def __init__(self, intra_op_threads: int = 1) -> None:
        self._threads = intra_op_threads
        self._loaded: LoadedModel | None = None

    def score_with_statistic(
        self, model: ResolvedModel, instance_paths: Sequence[str]
    ) -> tuple[ModelOutput, float]:
        """Score with `model`, loading (and verifying) it when it is not the one loaded."""
        loaded = self._loaded
        same = loaded is not None and (
            loaded.model.name,
            loaded.model.version,
            loaded.model.sha256,
        ) == (model.name, model.version, model.sha256)
        if loaded is None or not same:
            self._loaded = None  # a refused version must not leave the previous one served
            loaded = self._loaded = load_model_session(model, self._threads)
        return score_study(replace(loaded, model=model), instance_paths)
