"""Group commit: the instances that concurrent associations wait on share one transaction.

Every received instance must be committed before its sender hears success, and each commit costs
a flush of the write-ahead log. Work submitted while a commit is in progress is gathered into the
next transaction, so several waiting associations pay for one flush. A failing piece never
undoes another: the transaction is rolled back and the other pieces run again in a new one.
Pieces fail rarely (a fault, not a rule), so this costs less than a savepoint around each.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from sqlalchemy import Connection, Engine

T = TypeVar("T")
MAX_BATCH = 32
HOLD_CONNECTION_SECONDS = 1.0


@dataclass
class _Job(Generic[T]):
    work: Callable[[Connection], T]
    # Blocks until the job may be committed; raises when it must not be (its file never became
    # durable). Runs after every job's statements, so the waits of a batch overlap.
    ready: Callable[[], None] | None = None
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

    def submit(
        self, work: Callable[[Connection], T], ready: Callable[[], None] | None = None
    ) -> Callable[[], T]:
        """Queue `work(conn)` and return at once; the returned call waits for its outcome.

        The transaction holding `work` commits only after `ready()` returned; when it raises,
        the work is undone and the caller hears that error. The caller can meanwhile do what
        `ready` waits for (its own fsync) while the statements run.
        """
        job: _Job[T] = _Job(work, ready)
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
        conn: Connection | None = None
        while True:
            try:
                # Keep one connection while work keeps coming: checking a connection out and in
                # for every batch cost the committing thread about a third of its interpreter
                # time. After a quiet second it goes back to the pool, so no connection sits
                # idle in this thread long enough for a server to close it.
                first = self._queue.get(timeout=HOLD_CONNECTION_SECONDS if conn else None)
            except queue.Empty:
                assert conn is not None
                self._release(conn)
                conn = None
                continue
            batch = [first]
            while len(batch) < self._max_batch:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            try:
                if conn is None:
                    conn = self._engine.connect()
                if not self._commit(batch, conn) or conn.invalidated:
                    # The shared commit failed or the driver lost the connection: the next
                    # batch takes a fresh one from the pool (pinged on PostgreSQL).
                    self._release(conn)
                    conn = None
            except BaseException as exc:
                for job in batch:
                    job.error = job.error or exc
                    job.result = None
                if conn is not None:
                    self._release(conn)
                conn = None
            finally:
                for job in batch:
                    job.done.set()

    @staticmethod
    def _release(conn: Connection) -> None:
        with contextlib.suppress(Exception):
            conn.close()

    def _commit(self, batch: list[_Job[Any]], conn: Connection) -> bool:
        """Commit the batch's jobs; False when the shared commit itself failed."""
        while batch:
            undone, failed = self._attempt(batch, conn)
            if failed:
                return False
            # A job that failed or could not be made ready is undone with the rest of its
            # transaction; the others run again in a new one (their statements only touch the
            # database, so running them again is safe).
            batch = [job for job in batch if job.error is None]
            if not undone:
                return True
        return True

    def _attempt(self, batch: list[_Job[Any]], conn: Connection) -> tuple[bool, bool]:
        """One transaction for the batch: (rolled back for one job's sake, commit failed)."""
        try:
            with conn.begin():
                for job in batch:
                    try:
                        job.result = job.work(conn)
                    except Exception as exc:
                        job.error = exc
                        raise _Undo from exc
                # Every job's statements ran; now each waits for its own file to be durable.
                unready = False
                for job in batch:
                    if job.ready is not None:
                        try:
                            job.ready()
                        except BaseException as exc:
                            job.error = exc
                            unready = True
                if unready:
                    raise _Undo
        except _Undo:
            for job in batch:
                job.result = None
            return True, False
        except BaseException as exc:
            # The shared commit failed: nothing of the batch is durable, every caller hears it.
            for job in batch:
                job.error = job.error or exc
                job.result = None
            return False, True
        return False, False


class _Undo(Exception):
    """Roll the batch back: some of its jobs must not be committed."""
