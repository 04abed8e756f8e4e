"""The scoring side as the composition root wires it: one scorer per use case, routing, readiness.

Each use case's scorer re-resolves its registry alias every `mlflow.poll_seconds`; when the
served version changes (promotion, rollback, a file that no longer verifies) the change is
audited as `model-alias-changed`, counted, and shown on `/readyz` and in the metrics.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine

from gateway.audit.trail import record_event
from gateway.domain.model import Actor, ModelIdentity
from gateway.pipeline import Event, PipelineEvent
from gateway.ports import StudyScorer
from gateway.settings import Settings
from scoring.isolation import IsolatedScorer, ScorerSpec
from scoring.monitoring import DriftMonitor
from scoring.registry import ModelRegistry
from scoring.routing import route_study
from scoring.runner import OnnxStudyScorer

log = logging.getLogger(__name__)

GATEWAY_ACTOR = Actor(reference="Device/hitl-gateway", display="hitl-gateway")


def use_case_models(settings: Settings) -> dict[str, str]:
    """Registered model name per use case."""
    return {
        "cxr-pneumothorax": settings.mlflow.model_name,
        "ct-haemorrhage": settings.mlflow.ct_model_name,
    }


class ScoringService:
    """The per-use-case scorers of one process and what readiness and metrics show of them."""

    def __init__(self, settings: Settings, engine: Engine, metrics: Any = None) -> None:
        self._engine = engine
        self._alias = settings.mlflow.alias
        registry = ModelRegistry(settings.mlflow_tracking_uri)
        self.monitor = DriftMonitor(
            level=settings.scoring.drift_psi_level,
            window=settings.scoring.drift_window,
            min_samples=settings.scoring.drift_min_samples,
        )
        self._changes: Any = None
        isolated = settings.scoring.process_isolation
        self.scorers: dict[str, OnnxStudyScorer] = {
            use_case: OnnxStudyScorer(
                registry,
                name,
                self._alias,
                settings.mlflow.poll_seconds,
                on_alias_change=self._listener(use_case),
                monitor=self.monitor,
                sessions=not isolated,
            )
            for use_case, name in use_case_models(settings).items()
        }
        self._isolated: dict[str, IsolatedScorer] = {}
        if isolated:
            # A little before the scoring step's own timeout, so the child is killed and the
            # step's thread returns instead of being abandoned.
            deadline = max(0.1, settings.scoring.timeout_seconds * 0.9)
            self._isolated = {
                use_case: IsolatedScorer(
                    ScorerSpec(),
                    self.scorers[use_case],
                    workers=settings.scoring.workers,
                    deadline_seconds=deadline,
                    idle_seconds=settings.scoring.worker_idle_seconds,
                )
                for use_case in self.scorers
            }
        if metrics is not None:
            self.attach_metrics(metrics)
        self.route = route_study

    @property
    def step_scorers(self) -> dict[str, StudyScorer]:
        """The scorers the scoring step calls: isolated in child processes when configured."""
        if self._isolated:
            return dict(self._isolated)
        return dict(self.scorers)

    def close(self) -> None:
        """Stop the inference child processes."""
        for isolated in self._isolated.values():
            isolated.close()

    def attach_metrics(self, metrics: Any) -> None:
        """Count alias changes and expose the served version per use case."""
        self._changes = metrics.counter(
            "hitl_model_alias_changes_total", "Changes of the served model version seen."
        )
        metrics.gauge(
            "hitl_model_served_info",
            "The model version served per use case (1), or unavailable (0).",
            self._served_samples,
        )
        metrics.gauge(
            "hitl_model_drift_psi",
            "Population stability index of recent studies against the validation reference.",
            self.monitor.samples,
        )
        metrics.gauge(
            "hitl_model_drift_flagged",
            "1 when a version's drift is at or above scoring.drift_psi_level.",
            self.monitor.flag_samples,
        )

    def _listener(
        self, use_case: str
    ) -> Callable[[ModelIdentity | None, ModelIdentity | None, str], None]:
        def changed(
            previous: ModelIdentity | None, current: ModelIdentity | None, reason: str
        ) -> None:
            self.record_alias_change(use_case, previous, current, reason)

        return changed

    def record_alias_change(
        self,
        use_case: str,
        previous: ModelIdentity | None,
        current: ModelIdentity | None,
        reason: str,
    ) -> None:
        """Audit a change of the served version (this replica's observation)."""
        if self._changes is not None:
            self._changes.inc(use_case=use_case)
        was = f"{previous.name} v{previous.version}" if previous else "none"
        now = f"{current.name} v{current.version}" if current else "none"
        log.warning(
            "use case %s: served model changed from %s to %s %s", use_case, was, now, reason
        )
        with self._engine.begin() as conn:
            record_event(
                conn,
                PipelineEvent(
                    kind=Event.MODEL_ALIAS_CHANGED,
                    actor=GATEWAY_ACTOR,
                    occurred_at=datetime.now(UTC),
                    outcome="0" if current is not None else "4",
                    outcome_desc=reason[:2000],
                    model=current,
                    detail={
                        "use-case": use_case,
                        "alias": self._alias,
                        "previous-version": previous.version if previous else "",
                        "previous-model": previous.name if previous else "",
                    },
                ),
            )

    def _served_samples(self) -> Iterable[tuple[Mapping[str, str], float]]:
        for use_case, scorer in self.scorers.items():
            facts = scorer.describe()
            labels = {
                "use_case": use_case,
                "model": facts.get("model", ""),
                "version": facts.get("version", ""),
            }
            yield labels, 1.0 if facts.get("status") == "ok" else 0.0

    def describe(self, pool: Mapping[str, object] | None = None) -> dict[str, Any]:
        """Readiness: every use case's served version (or why none) and the worker pool."""
        use_cases: dict[str, dict[str, Any]] = {
            use_case: dict(s.describe()) for use_case, s in self.scorers.items()
        }
        healthy = all(v.get("status") == "ok" for v in use_cases.values())
        if pool is not None and pool.get("status") != "ok":
            healthy = False
        for drift in self.monitor.facts():
            served = use_cases.get(drift.use_case, {})
            if served.get("version") == drift.model.version:
                served["drift"] = {
                    "samples": drift.samples,
                    "score_psi": drift.score_psi,
                    "input_psi": drift.input_psi,
                    "flagged": drift.flagged,
                }
        facts: dict[str, Any] = {"status": "ok" if healthy else "degraded", "use_cases": use_cases}
        if pool is not None:
            facts["workers"] = dict(pool)
        if self._isolated:
            processes = {u: s.health() for u, s in self._isolated.items()}
            facts["worker_processes"] = processes
            if any(p["status"] != "ok" for p in processes.values()):
                facts["status"] = "degraded"
        return facts

    async def watch(self, stop: Any, interval: float) -> None:
        """Re-resolve every alias each `interval` seconds, so changes are seen without studies."""
        import asyncio
        import contextlib

        while not stop.is_set():
            try:
                await asyncio.to_thread(self.describe)
            except Exception:
                log.exception("checking the served models failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)
