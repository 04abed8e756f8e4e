"""Group commit: the instances that concurrent associations wait on share one transaction.

Every received instance must be committed before its sender hears success, and each commit costs
a flush of the write-ahead log. Work submitted while a commit is in progress is gathered into the
next transaction, each piece in its own savepoint (one failing piece never undoes another), so
several waiting associations pay for one flush. A lone sender waits for nobody: its batch holds
only its own work, run without a savepoint since its failure rolls back nothing but itself.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from sqlalchemy import Connection, Engine

T = TypeVar("T")
MAX_BATCH = 32


@dataclass
class _Job(Generic[T]):
    work: Callable[[Connection], T]
    done: threading.Event = field(default_factory=threading.Event)
    result: T | None = None
    error: BaseException | None = None


class GroupCommitter:
    """Runs submitted work in shared transactions on one committing thread."""

    def __init__(self, engine: Engine, *, max_batch: int = MAX_BATCH) -> None:
        self._engine = engine
        self._max_batch = max_batch
        self._queue: queue.SimpleQueue[_Job[Any]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def run(self, work: Callable[[Connection], T]) -> T:
        """Run `work(conn)` in a transaction shared with concurrent callers; return when durable."""
        return self.submit(work)()

    def submit(self, work: Callable[[Connection], T]) -> Callable[[], T]:
        """Queue `work(conn)` and return at once; the returned call waits for its outcome.

        Lets the caller do other work (its own fsync, which `work` may wait for before the
        commit) while the statements run.
        """
        job: _Job[T] = _Job(work)
        self._ensure_thread()
        self._queue.put(job)

        def outcome() -> T:
            job.done.wait()
            if job.error is not None:
                raise job.error
            return job.result  # type: ignore[return-value]

        return outcome

    def _ensure_thread(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="group-commit", daemon=True)
                self._thread.start()

    def _loop(self) -> None:
        while True:
            batch = [self._queue.get()]
            while len(batch) < self._max_batch:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            self._commit(batch)

    def _commit(self, batch: list[_Job[Any]]) -> None:
        if len(batch) == 1:
            self._commit_alone(batch[0])
            return
        try:
            with self._engine.begin() as conn:
                for job in batch:
                    try:
                        with conn.begin_nested():
                            job.result = job.work(conn)
                    except Exception as exc:
                        job.error = exc
        except BaseException as exc:
            # The shared commit failed: nothing of the batch is durable, every caller hears it.
            for job in batch:
                job.error = job.error or exc
                job.result = None
        finally:
            for job in batch:
                job.done.set()

    def _commit_alone(self, job: _Job[Any]) -> None:
        # Nothing else shares this transaction, so a failing piece rolls back the whole of it:
        # the outcome a savepoint would give, without its two extra statements.
        try:
            with self._engine.begin() as conn:
                job.result = job.work(conn)
        except BaseException as exc:
            job.error = exc
            job.result = None
        finally:
            job.done.set()
