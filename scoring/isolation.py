"""Inference in killable child processes, so a hung or crashing model cannot wedge scoring.

A thread stuck in onnxruntime or a pixel codec cannot be stopped; a process can. Each worker is
a spawned child (never forked from the multi-threaded gateway) that resolves and verifies the
served version itself, exactly as `OnnxStudyScorer` does, and answers one study at a time over
a pipe. When a study takes longer than the deadline, or the child dies (a segfault in a codec),
the child is killed and replaced and the study gets ModelUnavailable: standard triage, audited
by the scoring step, while the next study gets a fresh worker.
"""

from __future__ import annotations

import logging
import multiprocessing
import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from gateway.domain.errors import GatewayError, ModelUnavailable
from gateway.ports import ModelOutput

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ScorerSpec:
    """How a child builds its scorer: picklable, resolved again inside the child."""

    tracking_uri: str
    model_name: str
    alias: str
    refresh_seconds: float
    intra_op_threads: int = 1


ChildScorer = Callable[[ScorerSpec], Any]  # returns an object with score_with_statistic()


def onnx_scorer(spec: ScorerSpec) -> Any:
    """The child's scorer: the registry-backed ONNX scorer (imported in the child only)."""
    import scoring  # noqa: F401  (telemetry off before MLflow and onnxruntime load)
    from scoring.registry import ModelRegistry
    from scoring.runner import OnnxStudyScorer

    return OnnxStudyScorer(
        ModelRegistry(spec.tracking_uri),
        spec.model_name,
        spec.alias,
        spec.refresh_seconds,
        intra_op_threads=spec.intra_op_threads,
    )


def _child_main(conn: Connection, spec: ScorerSpec, factory: ChildScorer) -> None:
    """Serve score requests until the pipe closes."""
    scorer = factory(spec)
    while True:
        try:
            paths = conn.recv()
        except (EOFError, OSError):
            return
        try:
            output, input_mean = scorer.score_with_statistic(paths)
            conn.send(("ok", output, input_mean))
        except GatewayError as exc:
            conn.send(("unavailable", exc.message, 0.0))
        except Exception as exc:  # every model failure is a fallback, reported to the parent
            conn.send(("unavailable", f"model error: {type(exc).__name__}: {exc}", 0.0))


class _Child:
    def __init__(self, spec: ScorerSpec, factory: ChildScorer) -> None:
        context = multiprocessing.get_context("spawn")
        self.conn, child_conn = context.Pipe()
        self.process = context.Process(
            target=_child_main, args=(child_conn, spec, factory), daemon=True, name="inference"
        )
        self.process.start()
        child_conn.close()

    def kill(self) -> None:
        self.process.kill()
        self.process.join(5)
        self.conn.close()


class IsolatedScorer:
    """A `StudyScorer` running each study in one of `workers` killable child processes."""

    def __init__(
        self,
        spec: ScorerSpec,
        parent: Any,
        *,
        workers: int = 1,
        deadline_seconds: float = 30.0,
        factory: ChildScorer = onnx_scorer,
    ) -> None:
        self._spec = spec
        self._parent = parent  # describe() and drift monitoring stay in this process
        self._deadline = deadline_seconds
        self._factory = factory
        self._idle: queue.Queue[_Child] = queue.Queue()
        self._lock = threading.Lock()
        self._closed = False
        self.killed = 0
        # The last study's failure, until a study succeeds again: readiness shows it degraded.
        self.last_failure = ""
        for _ in range(max(1, workers)):
            self._idle.put(_Child(spec, factory))

    def score(self, instance_paths: Sequence[str]) -> ModelOutput:
        """Score in a child; ModelUnavailable when it fails, dies or passes the deadline."""
        try:
            output = self._score(instance_paths)
        except ModelUnavailable as exc:
            self.last_failure = exc.message
            raise
        self.last_failure = ""
        return output

    def _score(self, instance_paths: Sequence[str]) -> ModelOutput:
        try:
            child = self._idle.get(timeout=self._deadline)
        except queue.Empty:
            raise ModelUnavailable("no inference worker became free within the deadline") from None
        healthy = False
        try:
            child.conn.send(list(instance_paths))
            if not child.conn.poll(self._deadline):
                raise ModelUnavailable(
                    f"model timed out after {self._deadline:g} s; inference worker killed"
                )
            status, value, input_mean = child.conn.recv()
            healthy = True
        except (EOFError, OSError, BrokenPipeError) as exc:
            raise ModelUnavailable(
                f"inference worker died (exit code {child.process.exitcode}): {exc!r}"
            ) from exc
        finally:
            self._idle.put(child if healthy else self._replace(child))
        if status != "ok":
            raise ModelUnavailable(str(value))
        output: ModelOutput = value
        if hasattr(self._parent, "observe"):
            self._parent.observe(output, float(input_mean))
        return output

    def _replace(self, child: _Child) -> _Child:
        child.kill()
        with self._lock:
            self.killed += 1
        log.warning("inference worker %s killed and replaced", child.process.pid)
        return _Child(self._spec, self._factory)

    def health(self) -> dict[str, object]:
        """Worker facts for readiness: children alive and how many were killed."""
        alive = sum(1 for c in list(self._idle.queue) if c.process.is_alive())
        return {
            "status": "degraded" if self.last_failure else "ok",
            "last_failure": self.last_failure,
            "idle_workers_alive": alive,
            "killed": self.killed,
        }

    def describe(self) -> dict[str, str]:
        """Readiness facts of the served version (resolved in this process)."""
        facts: dict[str, str] = self._parent.describe()
        return facts

    def close(self) -> None:
        """Stop every child."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        while True:
            try:
                self._idle.get_nowait().kill()
            except queue.Empty:
                return
