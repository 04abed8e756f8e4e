"""onnxruntime scorer for the version under a registry alias (the `StudyScorer` port).

The alias is re-resolved every `refresh_seconds`, so a promotion is served without a restart. The
session is built from the very bytes whose SHA-256 was compared with the registered hash, so a file
swapped between check and load is never run. Every failure becomes ModelUnavailable: the caller
keeps the study in standard triage.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import replace

from gateway.domain.errors import GatewayError, ModelUnavailable
from gateway.domain.model import ModelIdentity
from gateway.ports import ModelOutput
from scoring.model_session import LoadedModel, load_model_session, score_study, verified_bytes
from scoring.monitoring import DriftMonitor
from scoring.registry import ModelRegistry, ResolvedModel

log = logging.getLogger(__name__)

AliasListener = Callable[[ModelIdentity | None, ModelIdentity | None, str], None]


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
        sessions: bool = True,
        clock: Callable[[], float] = time.monotonic,
        on_alias_change: AliasListener | None = None,
        monitor: DriftMonitor | None = None,
    ) -> None:
        self._registry = registry
        self._model_name = model_name
        self._alias = alias
        self._refresh_seconds = refresh_seconds
        self._threads = intra_op_threads
        # Off when inference runs in child processes: this side resolves and verifies the
        # version the children are sent, and holds no session of its own.
        self._sessions = sessions
        self._clock = clock
        self._lock = threading.Lock()
        self._loaded: LoadedModel | None = None
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
        return score_study(self._current(), instance_paths)

    def served_model(self) -> ResolvedModel:
        """The verified version under the alias (re-resolved when due), or ModelUnavailable."""
        return self._current().model

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

    def _current(self) -> LoadedModel:
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
            self._loaded = replace(current, model=resolved)
            return
        self._loaded = self._load(resolved)

    def _load(self, resolved: ResolvedModel) -> LoadedModel:
        if self._sessions:
            loaded = load_model_session(resolved, self._threads)
        else:
            verified_bytes(resolved)
            loaded = LoadedModel(resolved, None, "")
        if self._monitor is not None:
            self._monitor.set_reference(resolved.identity(), resolved.reference_json)
        return loaded
