"""Drift monitoring: production scores and input statistics against the version's validation data.

Each version may carry a validation reference (version tag `validation_reference`): the
distribution of its held-out scores over fixed bins of [0, 1] and of one input statistic (the
mean of the model input tensor) over bins cut at the validation quantiles. In production the
last `window` studies per version are compared with it by the population stability index,
PSI = sum over bins of (actual - expected) * ln(actual / expected); at or above the configured
level the version is flagged (a common reading: < 0.1 stable, 0.1-0.25 moderate, > 0.25 large).
"""

from __future__ import annotations

import json
import logging
import math
import threading
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from gateway.domain.errors import InvalidInput
from gateway.domain.model import ModelIdentity

REFERENCE_TAG = "validation_reference"
SCORE_EDGES = tuple(i / 10 for i in range(11))
EPSILON = 1e-4  # floor for empty bins, so PSI stays finite
log = logging.getLogger(__name__)


def psi(expected: Sequence[float], actual: Sequence[float]) -> float:
    """Population stability index of two distributions over the same bins (fractions)."""
    if len(expected) != len(actual) or not expected:
        raise ValueError("PSI needs two distributions over the same bins")
    total = 0.0
    for e, a in zip(expected, actual, strict=True):
        e, a = max(e, EPSILON), max(a, EPSILON)
        total += (a - e) * math.log(a / e)
    return total


def fractions(values: Sequence[float], edges: Sequence[float]) -> list[float]:
    """Share of values per bin; values outside the edges fall into the first or last bin."""
    inner = np.asarray(edges[1:-1], dtype=np.float64)
    index = np.searchsorted(inner, np.asarray(values, dtype=np.float64), side="right")
    counts = np.bincount(index, minlength=len(edges) - 1).astype(np.float64)
    return [float(c) for c in counts / max(1, len(values))]


@dataclass(frozen=True, slots=True)
class ValidationReference:
    """Binned validation distributions of the score and of the input-mean statistic."""

    score_edges: tuple[float, ...]
    score_fractions: tuple[float, ...]
    input_edges: tuple[float, ...]
    input_fractions: tuple[float, ...]

    def to_json(self) -> str:
        """Compact JSON for the version tag."""
        data = {
            "score_edges": self.score_edges,
            "score_fractions": [round(f, 6) for f in self.score_fractions],
            "input_edges": [round(e, 6) for e in self.input_edges],
            "input_fractions": [round(f, 6) for f in self.input_fractions],
        }
        return json.dumps(data, separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ValidationReference:
        """Parse a reference written by `to_json`."""
        try:
            data = json.loads(text)
            reference = cls(
                tuple(float(v) for v in data["score_edges"]),
                tuple(float(v) for v in data["score_fractions"]),
                tuple(float(v) for v in data["input_edges"]),
                tuple(float(v) for v in data["input_fractions"]),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise InvalidInput(f"invalid validation reference: {exc}") from exc
        if (
            len(reference.score_edges) != len(reference.score_fractions) + 1
            or len(reference.input_edges) != len(reference.input_fractions) + 1
        ):
            raise InvalidInput("validation reference: edges must be one more than fractions")
        return reference


def reference_from(scores: Sequence[float], input_means: Sequence[float]) -> ValidationReference:
    """The reference of a validation run: scores over tenths, input means over deciles."""
    if len(scores) < 10 or len(scores) != len(input_means):
        raise ValueError("a reference needs at least 10 paired scores and input means")
    cuts = np.quantile(np.asarray(input_means, dtype=np.float64), np.linspace(0, 1, 11))
    edges = tuple(float(c) for c in np.unique(cuts))
    if len(edges) < 3:
        edges = (float(cuts[0]) - 1e-6, float(cuts[0]), float(cuts[0]) + 1e-6)
    return ValidationReference(
        SCORE_EDGES,
        tuple(fractions(scores, SCORE_EDGES)),
        edges,
        tuple(fractions(input_means, edges)),
    )


@dataclass(frozen=True, slots=True)
class DriftFacts:
    """PSI of one version's recent production window, or why it cannot be computed."""

    use_case: str
    model: ModelIdentity
    samples: int
    score_psi: float | None
    input_psi: float | None
    flagged: bool


class DriftMonitor:
    """Recent scores and input statistics per served version; thread-safe."""

    def __init__(self, *, level: float = 0.2, window: int = 500, min_samples: int = 300) -> None:
        self.level = level
        self._window = window
        self._min_samples = min_samples
        self._lock = threading.Lock()
        self._seen: dict[ModelIdentity, deque[tuple[float, float]]] = {}
        self._references: dict[ModelIdentity, ValidationReference | None] = {}
        self._flagged: set[ModelIdentity] = set()

    def set_reference(self, model: ModelIdentity, reference_json: str) -> None:
        """Attach the version's reference (empty text: the version has none)."""
        reference = None
        if reference_json:
            try:
                reference = ValidationReference.from_json(reference_json)
            except InvalidInput as exc:
                log.warning("%s v%s: %s", model.name, model.version, exc.message)
        with self._lock:
            self._references[model] = reference

    def observe(self, model: ModelIdentity, score: float, input_mean: float) -> None:
        """Record one scored study."""
        with self._lock:
            window = self._seen.setdefault(model, deque(maxlen=self._window))
            window.append((score, input_mean))

    def facts(self) -> list[DriftFacts]:
        """Current PSI per version seen; flags versions at or above the level."""
        with self._lock:
            items = [(m, list(w), self._references.get(m)) for m, w in self._seen.items()]
        result = []
        for model, seen, reference in items:
            score_psi = input_psi = None
            if reference is not None and len(seen) >= self._min_samples:
                scores = [s for s, _ in seen]
                means = [m for _, m in seen]
                score_psi = psi(reference.score_fractions, fractions(scores, reference.score_edges))
                input_psi = psi(reference.input_fractions, fractions(means, reference.input_edges))
            flagged = any(v is not None and v >= self.level for v in (score_psi, input_psi))
            self._log_change(model, flagged, score_psi, input_psi)
            result.append(
                DriftFacts(model.use_case, model, len(seen), score_psi, input_psi, flagged)
            )
        return result

    def _log_change(
        self, model: ModelIdentity, flagged: bool, score: float | None, inputs: float | None
    ) -> None:
        with self._lock:
            if flagged and model not in self._flagged:
                self._flagged.add(model)
                log.warning(
                    "drift: %s v%s PSI score %s input %s at or above %g",
                    model.name,
                    model.version,
                    score,
                    inputs,
                    self.level,
                )
            elif not flagged:
                self._flagged.discard(model)

    def samples(self) -> Iterable[tuple[Mapping[str, str], float]]:
        """Gauge samples: PSI per version and signal (absent until enough studies)."""
        for facts in self.facts():
            labels = {
                "use_case": facts.use_case,
                "model": facts.model.name,
                "version": facts.model.version,
            }
            for signal, value in (("score", facts.score_psi), ("input", facts.input_psi)):
                if value is not None:
                    yield {**labels, "signal": signal}, value

    def flag_samples(self) -> Iterable[tuple[Mapping[str, str], float]]:
        """Gauge samples: 1 when the version's drift is at or above the level."""
        for facts in self.facts():
            labels = {
                "use_case": facts.use_case,
                "model": facts.model.name,
                "version": facts.model.version,
            }
            yield labels, 1.0 if facts.flagged else 0.0
