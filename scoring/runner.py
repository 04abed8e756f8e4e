"""onnxruntime scorer for the version under a registry alias (the `StudyScorer` port).

The alias is re-resolved every `refresh_seconds`, so a promotion is served without a restart. The
session is built from the very bytes whose SHA-256 was compared with the registered hash, so a file
swapped between check and load is never run. Every failure becomes ModelUnavailable: the caller
keeps the study in standard triage.
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from gateway.domain.errors import GatewayError, ModelUnavailable
from gateway.domain.model import ModelIdentity
from gateway.ports import ModelOutput
from scoring.ct import load_ct_volume
from scoring.monitoring import DriftMonitor
from scoring.preprocess import load_radiographs, tensor_hash
from scoring.registry import ModelRegistry, ResolvedModel

log = logging.getLogger(__name__)

AliasListener = Callable[[ModelIdentity | None, ModelIdentity | None, str], None]


@dataclass(frozen=True, slots=True)
class _Loaded:
    model: ResolvedModel
    session: Any
    output_name: str
    batched: bool = False


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
    loaded: _Loaded, input_name: str, tensor: npt.NDArray[np.float32]
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


class OnnxStudyScorer:
    """Scores studies with the ONNX model under `alias` of `model_name`; thread-safe."""

    def __init__(
        self,
        registry: ModelRegistry,
        model_name: str,
        alias: str = "production",
        refresh_seconds: float = 30.0,
        *,
        intra_op_threads: int = 1,
        clock: Callable[[], float] = time.monotonic,
        on_alias_change: AliasListener | None = None,
        monitor: DriftMonitor | None = None,
    ) -> None:
        self._registry = registry
        self._model_name = model_name
        self._alias = alias
        self._refresh_seconds = refresh_seconds
        self._threads = intra_op_threads
        self._clock = clock
        self._lock = threading.Lock()
        self._loaded: _Loaded | None = None
        self._checked_at: float | None = None
        self._reason = "not loaded yet"
        self._on_alias_change = on_alias_change
        self._monitor = monitor
        self._served: ModelIdentity | None = None
        self.alias_changes = 0

    @property
    def model_name(self) -> str:
        """The registered model this scorer serves."""
        return self._model_name

    def score(self, instance_paths: Sequence[str]) -> ModelOutput:
        """Score the study with the current production version (and feed drift monitoring)."""
        output, input_mean = self.score_with_statistic(instance_paths)
        self.observe(output, input_mean)
        return output

    def observe(self, output: ModelOutput, input_mean: float) -> None:
        """Record a scored study for drift monitoring."""
        if self._monitor is not None:
            self._monitor.observe(output.model, output.score, input_mean)

    def score_with_statistic(self, instance_paths: Sequence[str]) -> tuple[ModelOutput, float]:
        """The study's score and the mean of the model input (the drift input statistic)."""
        loaded = self._current()
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

    def describe(self) -> dict[str, str]:
        """Readiness facts: the served version and its SHA-256, or why nothing is served."""
        try:
            loaded = self._current()
        except ModelUnavailable as exc:
            return {
                "status": "unavailable",
                "use_case": "",
                "model": self._model_name,
                "alias": self._alias,
                "reason": exc.message,
            }
        return {
            "status": "ok",
            "model": loaded.model.name,
            "alias": self._alias,
            "version": loaded.model.version,
            "sha256": loaded.model.sha256,
            "use_case": loaded.model.contract.use_case,
        }

    def _current(self) -> _Loaded:
        """The session for the alias, re-resolved when the refresh interval has passed."""
        with self._lock:
            now = self._clock()
            due = self._checked_at is None or now - self._checked_at >= self._refresh_seconds
            if due:
                self._checked_at = now
                try:
                    self._refresh()
                except ModelUnavailable as exc:
                    # Fail closed: a version that can no longer be verified is not served.
                    self._loaded = None
                    self._reason = exc.message
                    self._notice(None, exc.message)
                    raise
                self._notice(self._loaded.model.identity() if self._loaded else None, "")
            if self._loaded is None:
                raise ModelUnavailable(self._reason)
            return self._loaded

    def _notice(self, served: ModelIdentity | None, reason: str) -> None:
        """Tell the listener when the served version changes (including to none)."""
        if served == self._served:
            return
        previous, self._served = self._served, served
        self.alias_changes += 1
        if self._on_alias_change is not None:
            try:
                self._on_alias_change(previous, served, reason)
            except Exception:
                # Auditing the change must not stop scoring; the failure is logged.
                log.exception("recording the alias change of %s failed", self._model_name)

    def _refresh(self) -> None:
        try:
            resolved = self._registry.resolve(self._model_name, self._alias)
        except GatewayError:
            raise
        except Exception as exc:
            raise ModelUnavailable(
                f"registry look-up of {self._model_name!r}@{self._alias} failed: {exc}"
            ) from exc
        current = self._loaded
        if current is not None and (current.model.version, current.model.sha256) == (
            resolved.version,
            resolved.sha256,
        ):
            self._loaded = _Loaded(resolved, current.session, current.output_name, current.batched)
            return
        self._loaded = self._load(resolved)

    def _load(self, resolved: ResolvedModel) -> _Loaded:
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
        try:
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.intra_op_num_threads = self._threads
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
        if self._monitor is not None:
            self._monitor.set_reference(resolved.identity(), resolved.reference_json)
        return _Loaded(resolved, session, output_name, batched)
