"""Group commit: the instances that concurrent associations wait on share one transaction.

Every received instance must be committed before its sender hears success, and each commit costs
a flush of the write-ahead log. Work submitted while a commit is in progress is gathered into the
next transaction, so several waiting associations pay for one flush. A failing piece never
undoes another: the transaction is rolled back and the other pieces run again in a new one.
Pieces fail rarely (a fault, not a rule), so this costs less than a savepoint around each.

A connection the database dropped before the commit was asked for (a server restart, a
failover) is not a piece's fault: the batch runs again on a fresh connection. A connection lost
during the commit leaves its outcome unknown, and every waiting caller hears the failure.

A caller whose promise does not rest on the commit (a received instance whose file is durable
and is recovered from the spool after a crash, see gateway.spool_recovery) may hear its outcome
once every piece of its batch is ready, before the commit: the association goes on receiving
while the log is flushed. Such a piece is owed a commit: when the commit fails it runs again,
first in the next batch, until it is committed.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError

T = TypeVar("T")
log = logging.getLogger(__name__)
MAX_BATCH = 32
HOLD_CONNECTION_SECONDS = 1.0
# Pauses before each attempt at a batch; after the first, each runs on a fresh connection
# because the database dropped the last one (a failover takes a moment to finish).
RECONNECT_PAUSES = (0.0, 0.0, 0.5, 2.0)
# Pause before running owed pieces again after their commit failed, growing to the last.
OWED_PAUSES = (0.1, 0.5, 2.0, 5.0)
# An owed piece whose own work keeps failing is given up after this many runs (its file stays
# pending and is recovered at the next start).
MAX_OWED_RUNS = 50


class _Outcome(enum.Enum):
    COMMITTED = "committed"
    FAILED = "failed"  # the shared commit failed: every caller of the batch hears it
    LOST = "lost"  # the connection went away before the commit: the batch may run again


@dataclass
class _Job(Generic[T]):
    work: Callable[[Connection], T]
    # Blocks until the job may be committed; raises when it must not be (its file never became
    # durable). Runs after every job's statements, so the waits of a batch overlap.
    ready: Callable[[], None] | None = None
    # The caller hears this result once the batch is ready, before the commit (when True).
    answer_early: Callable[[T], bool] | None = None
    # Runs on the committing thread with the committed result.
    after_commit: Callable[[T], None] | None = None
    done: threading.Event = field(default_factory=threading.Event)
    result: T | None = None
    error: BaseException | None = None
    answered: bool = False  # the caller heard `answer`; the commit is owed to it
    answer: T | None = None
    committed: bool = False
    runs: int = 0


class GroupCommitter:
    """Runs submitted work in shared transactions on one committing thread."""

    def __init__(self, engine: Engine, *, max_batch: int = MAX_BATCH) -> None:
        self._engine = engine
        self._max_batch = max_batch
        self._queue: queue.SimpleQueue[_Job[Any]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        # Answered pieces whose commit failed; only the committing thread touches it.
        self._owed: list[_Job[Any]] = []

    def run(self, work: Callable[[Connection], T]) -> T:
        """Run `work(conn)` in a transaction shared with concurrent callers; return when durable."""
        return self.submit(work)()

    def submit(
        self,
        work: Callable[[Connection], T],
        ready: Callable[[], None] | None = None,
        *,
        answer_early: Callable[[T], bool] | None = None,
        after_commit: Callable[[T], None] | None = None,
    ) -> Callable[[], T]:
        """Queue `work(conn)` and return at once; the returned call waits for its outcome.

        The transaction holding `work` commits only after `ready()` returned; when it raises,
        the work is undone and the caller hears that error. The caller can meanwhile do what
        `ready` waits for (its own fsync) while the statements run. When `answer_early(result)`
        is true the caller hears the result once the batch is ready, and the commit is owed:
        it is retried until it succeeds. `after_commit(result)` runs once committed.
        """
        job: _Job[T] = _Job(work, ready, answer_early, after_commit)
        self._ensure_thread()
        self._queue.put(job)

        def outcome() -> T:
            job.done.wait()
            if job.answered:
                return job.answer  # type: ignore[return-value]
            if job.error is not None:
                raise job.error
            return job.result  # type: ignore[return-value]

        return outcome

    def settle(self) -> None:
        """Return once everything submitted before, owed commits included, is committed."""
        self.run(lambda conn: None)

    def _ensure_thread(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="group-commit", daemon=True)
                self._thread.start()

    def _loop(self) -> None:
        conn: Connection | None = None
        failures = 0
        while True:
            if self._owed:
                # Owed pieces go first, so work submitted after them commits after them.
                time.sleep(OWED_PAUSES[min(failures, len(OWED_PAUSES) - 1)])
                failures += 1
                batch, self._owed = self._owed[: self._max_batch], self._owed[self._max_batch :]
            else:
                failures = 0
                try:
                    # Keep one connection while work keeps coming: checking a connection out
                    # and in for every batch cost the committing thread about a third of its
                    # interpreter time. After a quiet second it goes back to the pool, so no
                    # connection sits idle in this thread long enough for a server to close it.
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
            conn = self._run_batch(batch, conn)

    def _run_batch(self, batch: list[_Job[Any]], conn: Connection | None) -> Connection | None:
        """Commit the batch, on a fresh connection when the database dropped this one."""
        waiting = list(batch)
        try:
            for pause in RECONNECT_PAUSES:
                if pause:
                    time.sleep(pause)
                if conn is None:
                    conn = self._engine.connect()
                outcome = self._commit(batch, conn)
                if outcome is _Outcome.COMMITTED and not conn.invalidated:
                    return conn
                if outcome is _Outcome.LOST:
                    with contextlib.suppress(Exception):
                        conn.invalidate()
                # The shared commit failed or the driver lost the connection: the next attempt
                # or batch takes a fresh one from the pool (pinged on PostgreSQL).
                self._release(conn)
                conn = None
                batch = [job for job in batch if job.error is None]
                if outcome is not _Outcome.LOST or not batch:
                    return None
            for job in batch:
                job.error = ConnectionError("the database connection was lost at every attempt")
            return None
        except BaseException as exc:
            for job in batch:
                job.error = job.error or exc
                job.result = None
            if conn is not None:
                self._release(conn)
            return None
        finally:
            for job in waiting:
                if job.answered and not job.committed:
                    self._owe(job)
                else:
                    job.done.set()

    def _owe(self, job: _Job[Any]) -> None:
        """Keep an answered piece whose commit failed, to run it again."""
        job.error = None
        job.result = None
        if job.runs >= MAX_OWED_RUNS:
            log.error("an answered piece could not be committed in %d runs; given up", job.runs)
            return
        self._owed.append(job)

    @staticmethod
    def _release(conn: Connection) -> None:
        with contextlib.suppress(Exception):
            conn.close()

    def _commit(self, batch: list[_Job[Any]], conn: Connection) -> _Outcome:
        """Commit the batch's jobs that do not fail on their own."""
        while batch:
            undone, outcome = self._attempt(batch, conn)
            if outcome is not _Outcome.COMMITTED:
                return outcome
            # A job that failed or could not be made ready is undone with the rest of its
            # transaction; the others run again in a new one (their statements only touch the
            # database, so running them again is safe).
            batch = [job for job in batch if job.error is None]
            if not undone:
                return outcome
        return _Outcome.COMMITTED

    def _attempt(self, batch: list[_Job[Any]], conn: Connection) -> tuple[bool, _Outcome]:
        """One transaction for the batch: (rolled back for one job's sake, its outcome)."""
        lost = False
        try:
            with conn.begin():
                for job in batch:
                    job.runs += 1
                    try:
                        job.result = job.work(conn)
                    except Exception as exc:
                        if _disconnected(conn, exc):
                            lost = True
                            raise _Lost from exc
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
                for job in batch:
                    if not job.answered and job.answer_early and job.answer_early(job.result):
                        job.answer, job.answered = job.result, True
                        job.done.set()
        except _Undo:
            for job in batch:
                job.result = None
            return True, _Outcome.COMMITTED
        except BaseException as exc:
            if lost:
                # Also when the rollback on the dropped connection failed in turn.
                for job in batch:
                    job.result = None
                return False, _Outcome.LOST
            # The shared commit failed: nothing of the batch is durable, every caller hears it.
            for job in batch:
                job.error = job.error or exc
                job.result = None
            return False, _Outcome.FAILED
        for job in batch:
            job.committed = True
            if job.after_commit is not None:
                try:
                    job.after_commit(job.result)
                except Exception:
                    log.exception("the step after a commit failed")
        return False, _Outcome.COMMITTED


def _disconnected(conn: Connection, exc: BaseException) -> bool:
    """True when `exc` says the database connection went away, not that the work was wrong."""
    if isinstance(exc, DBAPIError):
        return bool(exc.connection_invalidated)
    # Hot-path statements run on the driver's cursor (gateway.persistence.driver_statement):
    # its errors reach here unwrapped, and the dialect tells a dropped connection apart.
    dbapi = conn.dialect.loaded_dbapi
    if not isinstance(exc, dbapi.Error):
        return False
    try:
        raw = conn.connection.dbapi_connection
        return bool(conn.dialect.is_disconnect(exc, raw, None))
    except Exception:
        return False


class _Lost(Exception):
    """The connection went away while the batch's statements ran; nothing was committed."""


class _Undo(Exception):
    """Roll the batch back: some of its jobs must not be committed."""
