"""Inference in killable child processes, so a hung or crashing model cannot wedge scoring.

A thread stuck in onnxruntime or a pixel codec cannot be stopped; a process can. Each worker is
a spawned child (never forked from the multi-threaded gateway) that answers one study at a time
over a pipe. The gateway process resolves and verifies the served version (it holds the registry
client, loaded once) and sends it with each study; the child verifies the file's hash again and
loads it only when the version changes, so a child needs onnxruntime, numpy and pydicom, not
MLflow. When a study takes longer than the deadline, or the child dies (a segfault in a codec),
the child is killed and the study gets ModelUnavailable: standard triage, audited by the
scoring step; the next study gets a fresh worker.

Workers start when a study needs one and stop after `idle_seconds` without a study, so an idle
gateway holds no model in memory; the first study after a stop pays the child's start.
"""

from __future__ import annotations

import logging
import multiprocessing
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from gateway.domain.errors import GatewayError, ModelUnavailable
from gateway.ports import ModelOutput

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ScorerSpec:
    """How a child builds its scorer: picklable."""

    intra_op_threads: int = 1


ChildScorer = Callable[[ScorerSpec], Any]  # returns an object with score_with_statistic()


def onnx_scorer(spec: ScorerSpec) -> Any:
    """The child's scorer: runs the version it is sent (onnxruntime imported in the child only)."""
    import scoring  # noqa: F401  (telemetry off before onnxruntime loads)
    from scoring.model_session import SentModelScorer

    return SentModelScorer(spec.intra_op_threads)


def _child_main(conn: Connection, spec: ScorerSpec, factory: ChildScorer) -> None:
    """Serve score requests until the pipe closes."""
    scorer = factory(spec)
    while True:
        try:
            model, paths = conn.recv()
        except (EOFError, OSError):
            return
        try:
            output, input_mean = scorer.score_with_statistic(model, paths)
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
        self.idle_since = 0.0

    def kill(self) -> None:
        self.process.kill()
        self.process.join(5)
        self.conn.close()

    def stop(self) -> None:
        """Close the pipe (the child returns from recv and exits); kill it if it lingers."""
        self.conn.close()
        self.process.join(5)
        if self.process.is_alive():
            self.kill()


class IsolatedScorer:
    """A `StudyScorer` running each study in one of up to `workers` killable child processes."""

    def __init__(
        self,
        spec: ScorerSpec,
        parent: Any,
        *,
        workers: int = 1,
        deadline_seconds: float = 30.0,
        idle_seconds: float = 600.0,
        factory: ChildScorer = onnx_scorer,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._spec = spec
        # Resolution, readiness and drift monitoring stay in this process.
        self._parent = parent
        self._workers = max(1, workers)
        self._deadline = deadline_seconds
        self._idle_seconds = idle_seconds
        self._factory = factory
        self._clock = clock
        self._cond = threading.Condition()
        self._idle: list[_Child] = []  # the most recently used last: it is reused first
        self._running = 0
        self._closed = False
        self._reaper: threading.Thread | None = None
        self.started = 0
        self.stopped_idle = 0
        self.killed = 0
        # The last study's failure, until a study succeeds again: readiness shows it degraded.
        self.last_failure = ""
        if idle_seconds <= 0:
            # Never stopped: started with the gateway, as a site with a tight timeout wants.
            for _ in range(self._workers):
                with self._cond:
                    self._running += 1
                self._release(self._start(), healthy=True)

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
        model = self._parent.served_model()
        child = self._acquire()
        healthy = False
        try:
            child.conn.send((model, list(instance_paths)))
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
            self._release(child, healthy=healthy)
        if status != "ok":
            raise ModelUnavailable(str(value))
        output: ModelOutput = value
        if hasattr(self._parent, "observe"):
            self._parent.observe(output, float(input_mean))
        return output

    def _acquire(self) -> _Child:
        """An idle child, a new one while fewer than `workers` run, or wait for one to free."""
        end = self._clock() + self._deadline
        with self._cond:
            if self._closed:
                raise ModelUnavailable("inference workers are stopped: the gateway is stopping")
            while not self._idle and self._running >= self._workers:
                remaining = end - self._clock()
                if self._closed or remaining <= 0:
                    raise ModelUnavailable("no inference worker became free within the deadline")
                self._cond.wait(remaining)
            if self._idle:
                return self._idle.pop()
            self._running += 1
        return self._start()

    def _start(self) -> _Child:
        """A new child, in a slot the caller has counted in `_running`."""
        try:
            child = _Child(self._spec, self._factory)
        except Exception as exc:
            with self._cond:
                self._running -= 1
                self._cond.notify()
            raise ModelUnavailable(f"inference worker could not start: {exc}") from exc
        with self._cond:
            self.started += 1
            if self._reaper is None and self._idle_seconds > 0:
                self._reaper = threading.Thread(
                    target=self._stop_idle_children, name="inference-idle", daemon=True
                )
                self._reaper.start()
        return child

    def _release(self, child: _Child, *, healthy: bool) -> None:
        if not healthy:
            child.kill()
            log.warning("inference worker %s killed", child.process.pid)
        with self._cond:
            if healthy and not self._closed:
                child.idle_since = self._clock()
                self._idle.append(child)
            else:
                self._running -= 1
                if not healthy:
                    self.killed += 1
            self._cond.notify()
        if healthy and self._closed:
            child.stop()

    def _stop_idle_children(self) -> None:
        """Stop children idle for longer than `idle_seconds`, until closed."""
        interval = min(max(self._idle_seconds / 4, 0.05), 5.0)
        while True:
            with self._cond:
                self._cond.wait(interval)
                if self._closed:
                    return
                due = self._clock() - self._idle_seconds
                stale = [c for c in self._idle if c.idle_since <= due]
                self._idle = [c for c in self._idle if c.idle_since > due]
                self._running -= len(stale)
                self.stopped_idle += len(stale)
            for child in stale:
                child.stop()

    def health(self) -> dict[str, object]:
        """Worker facts for readiness: children running and idle, started, stopped and killed."""
        with self._cond:
            running, idle = self._running, len(self._idle)
        return {
            "status": "degraded" if self.last_failure else "ok",
            "last_failure": self.last_failure,
            "running": running,
            "idle": idle,
            "started": self.started,
            "stopped_idle": self.stopped_idle,
            "killed": self.killed,
        }

    def describe(self) -> dict[str, str]:
        """Readiness facts of the served version (resolved in this process)."""
        facts: dict[str, str] = self._parent.describe()
        return facts

    def close(self) -> None:
        """Stop every child (busy ones when their study returns)."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            idle, self._idle = self._idle, []
            self._running -= len(idle)
            self._cond.notify_all()
        for child in idle:
            child.kill()
