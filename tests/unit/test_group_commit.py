"""Group commit: waiting work shares one transaction; a failing piece undoes only itself."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest
from sqlalchemy import (
    Column,
    Connection,
    Engine,
    Integer,
    MetaData,
    Table,
    event,
    insert,
    select,
    text,
)

from gateway.group_commit import GroupCommitter
from gateway.persistence.db import make_engine

probe = Table("gc_probe", MetaData(), Column("n", Integer, primary_key=True))


def _with_probe(url: str) -> Iterator[Engine]:
    engine = make_engine(url)
    with engine.begin() as conn:
        probe.create(conn)
    yield engine
    engine.dispose()


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    """A database with one small table."""
    yield from _with_probe(database_url)


def _behind_a_slow_first(
    committer: GroupCommitter,
    submit: Callable[[int], None],
    jobs: int,
    started: threading.Event,
    gate: threading.Event,
) -> None:
    """Job 0 holds the committing thread (inside its work until `gate`) while the others queue
    up behind it, so they share the next batch; then every job runs to its end."""
    threads = [threading.Thread(target=submit, args=(n,)) for n in range(jobs)]
    threads[0].start()
    assert started.wait(10)  # the committing thread is inside the first transaction
    for t in threads[1:]:
        t.start()
    deadline = time.monotonic() + 10
    while committer._queue.qsize() < jobs - 1 and time.monotonic() < deadline:
        time.sleep(0.005)
    gate.set()
    for t in threads:
        t.join(10)


def test_waiting_work_shares_one_commit_and_a_failure_undoes_only_itself(engine: Engine) -> None:
    commits: list[int] = []
    event.listen(engine, "commit", lambda _conn: commits.append(1))
    committer = GroupCommitter(engine)
    gate, started = threading.Event(), threading.Event()
    results: dict[int, object] = {}

    def work(n: int) -> object:
        def body(conn: Connection) -> int:
            if n == 0:
                started.set()
                gate.wait(10)  # the first transaction is slow; the others queue up behind it
            conn.execute(insert(probe).values(n=n))
            if n == 5:
                raise ValueError("bad instance")
            return n

        try:
            return committer.run(body)
        except ValueError as exc:
            return exc

    def submit(n: int) -> None:
        results[n] = work(n)

    _behind_a_slow_first(committer, submit, 8, started, gate)
    assert isinstance(results.pop(5), ValueError)
    assert results == {n: n for n in (0, 1, 2, 3, 4, 6, 7)}
    with engine.connect() as conn:
        assert sorted(conn.execute(select(probe.c.n)).scalars()) == [0, 1, 2, 3, 4, 6, 7]
    assert len(commits) == 2  # the first alone, then the seven that waited, together


def test_work_that_never_becomes_ready_is_undone_alone(engine: Engine) -> None:
    committer = GroupCommitter(engine)
    gate, started = threading.Event(), threading.Event()
    order: list[str] = []
    results: dict[int, object] = {}

    def body(n: int) -> Callable[[Connection], int]:
        def run(conn: Connection) -> int:
            if n == 0:
                started.set()
                gate.wait(10)
            conn.execute(insert(probe).values(n=n))
            order.append(f"statements {n}")
            return n

        return run

    def ready(n: int) -> Callable[[], None]:
        def check() -> None:
            order.append(f"ready {n}")
            if n == 2:
                raise OSError("the file never reached the disk")

        return check

    def submit(n: int) -> None:
        try:
            results[n] = committer.submit(body(n), ready(n))()
        except OSError as exc:
            results[n] = exc

    _behind_a_slow_first(committer, submit, 4, started, gate)
    assert isinstance(results.pop(2), OSError)
    assert results == {0: 0, 1: 1, 3: 3}
    with engine.connect() as conn:
        assert sorted(conn.execute(select(probe.c.n)).scalars()) == [0, 1, 3]
    # In the shared batch every job's statements run before any job is waited for.
    batch = order[order.index("ready 0") + 1 :]
    assert batch[:3] == ["statements 1", "statements 2", "statements 3"]
    assert "ready 2" in batch


def test_a_database_error_in_a_shared_batch_undoes_only_its_own_work(engine: Engine) -> None:
    # PostgreSQL aborts the whole transaction on an error: the others must still be committed.
    committer = GroupCommitter(engine)
    gate, started = threading.Event(), threading.Event()
    results: dict[int, object] = {}
    runs: list[int] = []

    def body(n: int) -> Callable[[Connection], int]:
        def run(conn: Connection) -> int:
            runs.append(n)
            if n == 0:
                started.set()
                gate.wait(10)
            # Jobs 2 and 3 insert the same key: the later of the two breaks the constraint.
            conn.execute(insert(probe).values(n={0: 0, 1: 1, 2: 2, 3: 2, 4: 4}[n]))
            return n

        return run

    def submit(n: int) -> None:
        try:
            results[n] = committer.run(body(n))
        except Exception as exc:  # the test looks at what the caller heard
            results[n] = exc

    _behind_a_slow_first(committer, submit, 5, started, gate)
    failed = [n for n, r in results.items() if isinstance(r, Exception)]
    assert len(failed) == 1
    assert failed[0] in (2, 3)
    assert {n: r for n, r in results.items() if n not in failed} == {
        n: n for n in range(5) if n not in failed
    }
    with engine.connect() as conn:
        assert sorted(conn.execute(select(probe.c.n)).scalars()) == [0, 1, 2, 4]
    assert len(runs) > 5  # the batch was rolled back and the others ran again


def test_back_to_back_batches_share_one_connection_that_returns_to_the_pool_when_quiet(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    import gateway.group_commit as group_commit

    monkeypatch.setattr(group_commit, "HOLD_CONNECTION_SECONDS", 0.2)
    checkouts: list[int] = []
    checkins: list[int] = []
    event.listen(engine, "checkout", lambda *_: checkouts.append(1))
    event.listen(engine, "checkin", lambda *_: checkins.append(1))
    committer = GroupCommitter(engine)

    def insert_n(n: int) -> Callable[[Connection], object]:
        return lambda conn: conn.execute(insert(probe).values(n=n))

    for n in range(20):
        committer.run(insert_n(n))
    assert (len(checkouts), len(checkins)) == (1, 0)
    deadline = time.monotonic() + 10
    while not checkins and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(checkins) == 1  # quiet: the connection went back to the pool
    committer.run(lambda conn: conn.execute(insert(probe).values(n=20)))
    assert len(checkouts) == 2
    with engine.connect() as conn:
        assert conn.execute(select(probe.c.n)).scalars().all() == list(range(21))


def test_a_failed_commit_reaches_every_caller_and_the_next_batch_takes_a_fresh_connection(
    engine: Engine,
) -> None:
    checkouts: list[int] = []
    event.listen(engine, "checkout", lambda *_: checkouts.append(1))
    failing = [True]

    def refuse_commit(_conn: Connection) -> None:
        if failing[0]:
            failing[0] = False
            raise RuntimeError("the database went away at commit")

    event.listen(engine, "commit", refuse_commit)
    committer = GroupCommitter(engine)
    with pytest.raises(RuntimeError, match="went away at commit"):
        committer.run(lambda conn: conn.execute(insert(probe).values(n=1)))
    committer.run(lambda conn: conn.execute(insert(probe).values(n=2)))
    assert len(checkouts) == 2
    with engine.connect() as conn:
        assert conn.execute(select(probe.c.n)).scalars().all() == [2]


@pytest.fixture
def pg_engine(postgres_url: str) -> Iterator[Engine]:
    """PostgreSQL with the probe table: a server can drop a connection, SQLite cannot."""
    yield from _with_probe(postgres_url)


def _drop_backend(engine: Engine, pid: int) -> None:
    """Have the server end one connection, as a restart or a failover does."""
    with engine.connect() as conn:
        assert conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid}).scalar()
        conn.commit()
    deadline = time.monotonic() + 10
    with engine.connect() as conn:
        while (
            conn.execute(
                text("SELECT count(*) FROM pg_stat_activity WHERE pid = :pid"), {"pid": pid}
            ).scalar()
            and time.monotonic() < deadline
        ):
            time.sleep(0.01)


@pytest.mark.parametrize("through", ["driver cursor", "sqlalchemy"])
def test_work_on_a_connection_the_server_dropped_runs_again_on_a_fresh_one(
    pg_engine: Engine, through: str
) -> None:
    # The committing thread keeps its connection between batches; the server ended it (a
    # restart, a failover) before the next batch's statements. They were never committed, so
    # the batch runs again on a fresh connection and the callers hear success, once.
    committer = GroupCommitter(pg_engine)
    backends: list[int] = []

    def insert_n(n: int) -> Callable[[Connection], int]:
        def work(conn: Connection) -> int:
            backends.append(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())
            return n

        def driver_work(conn: Connection) -> int:
            cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
            cursor.execute("SELECT pg_backend_pid()")
            backends.append(cursor.fetchone()[0])
            cursor.execute("INSERT INTO gc_probe (n) VALUES (%s)", (n,))
            return n

        def sqlalchemy_work(conn: Connection) -> int:
            conn.execute(insert(probe).values(n=n))
            return work(conn)

        return driver_work if through == "driver cursor" else sqlalchemy_work

    assert committer.run(insert_n(1)) == 1
    _drop_backend(pg_engine, backends[-1])
    assert committer.run(insert_n(2)) == 2
    assert committer.run(insert_n(3)) == 3
    with pg_engine.connect() as conn:
        assert conn.execute(select(probe.c.n).order_by(probe.c.n)).scalars().all() == [1, 2, 3]
    assert backends[0] not in backends[-2:]


def test_a_connection_lost_at_every_attempt_fails_the_batch_without_committing(
    pg_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("gateway.group_commit.RECONNECT_PAUSES", (0.0, 0.0))
    committer = GroupCommitter(pg_engine)
    attempts: list[int] = []

    def doomed(conn: Connection) -> None:
        conn.execute(insert(probe).values(n=len(attempts) + 10))
        pid = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
        attempts.append(pid)
        _drop_backend(pg_engine, pid)
        conn.execute(text("SELECT 1"))  # on the dropped connection

    with pytest.raises(ConnectionError, match="lost at every attempt"):
        committer.run(doomed)
    assert len(attempts) == 2
    assert committer.run(lambda conn: conn.execute(insert(probe).values(n=1)) and 1) == 1
    with pg_engine.connect() as conn:
        assert conn.execute(select(probe.c.n)).scalars().all() == [1]


def _insert(n: int) -> Callable[[Connection], int]:
    def work(conn: Connection) -> int:
        conn.execute(insert(probe).values(n=n))
        return n

    return work


def _committed(engine: Engine) -> list[int]:
    with engine.connect() as conn:
        return list(conn.execute(select(probe.c.n).order_by(probe.c.n)).scalars())


def test_work_answered_early_hears_its_result_before_the_commit_and_runs_after_it(
    engine: Engine,
) -> None:
    committing, release = threading.Event(), threading.Event()

    def hold_commit(_conn: Connection) -> None:
        committing.set()
        assert release.wait(10)

    event.listen(engine, "commit", hold_commit)
    after: list[int] = []
    committer = GroupCommitter(engine)
    outcome = committer.submit(
        _insert(1), lambda: None, answer_early=lambda n: n == 1, after_commit=after.append
    )
    assert outcome() == 1  # returns while the commit is held
    assert committing.wait(10)
    assert after == []
    release.set()
    committer.settle()
    assert after == [1]
    assert _committed(engine) == [1]


def test_work_answered_early_is_not_answered_when_its_batch_is_not_ready(engine: Engine) -> None:
    committer = GroupCommitter(engine)

    def never_ready() -> None:
        raise OSError("the file could not be made durable")

    with pytest.raises(OSError, match="durable"):
        committer.submit(_insert(1), never_ready, answer_early=lambda n: True)()
    assert _committed(engine) == []


def test_an_answered_piece_whose_commit_failed_runs_again_until_committed(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("gateway.group_commit.OWED_PAUSES", (0.0,))
    refusals = [1]

    def refuse_commit(_conn: Connection) -> None:
        if refusals[0]:
            refusals[0] -= 1
            raise RuntimeError("the database went away at commit")

    event.listen(engine, "commit", refuse_commit)
    after: list[int] = []
    committer = GroupCommitter(engine)
    assert (
        committer.submit(_insert(7), answer_early=lambda n: True, after_commit=after.append)() == 7
    )
    # Submitted after the answered piece, so it commits after (or with) it: it waits for it.
    committer.settle()
    assert _committed(engine) == [7]
    assert after == [7]
    assert refusals == [0]


def test_an_answered_piece_that_fails_on_its_own_when_run_again_is_given_up(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("gateway.group_commit.OWED_PAUSES", (0.0,))
    monkeypatch.setattr("gateway.group_commit.MAX_OWED_RUNS", 3)
    runs = [0]
    refusals = [1]

    def refuse_commit(_conn: Connection) -> None:
        if refusals[0]:
            refusals[0] -= 1
            raise RuntimeError("the database went away at commit")

    def flaky(conn: Connection) -> int:
        runs[0] += 1
        if runs[0] > 1:
            raise ValueError("this piece now fails on its own")
        conn.execute(insert(probe).values(n=1))
        return 1

    event.listen(engine, "commit", refuse_commit)
    committer = GroupCommitter(engine)
    assert committer.submit(flaky, answer_early=lambda n: True)() == 1
    committer.run(_insert(2))  # not held up by the piece given up
    committer.settle()
    assert runs[0] == 3
    assert _committed(engine) == [2]
