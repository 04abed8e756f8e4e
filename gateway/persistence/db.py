"""Engine creation with the durability settings each database needs."""

from __future__ import annotations

import threading
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.pool import ConnectionPoolEntry

GATE_TIMEOUT_SECONDS = 30.0


def _sqlite_pragmas(dbapi_conn: DBAPIConnection, _record: ConnectionPoolEntry) -> None:
    cur = dbapi_conn.cursor()
    # WAL lets readers run beside the single writer; FULL makes each commit survive power loss,
    # which "success only after a durable write" requires.
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def _sqlite_begin_immediate(conn: Any) -> None:
    # A deferred SQLite transaction that reads and later writes can fail with SQLITE_BUSY when
    # another writer got in between; taking the write lock at BEGIN serialises writers cleanly.
    # On the driver's connection: SQLAlchemy's statement execution around one BEGIN cost more
    # interpreter time than the statement (it runs once per transaction, on every hot path).
    conn.connection.driver_connection.execute("BEGIN IMMEDIATE")


def _add_writer_gate(engine: Engine) -> None:
    # SQLite's busy handler polls with growing sleeps, so a thread committing back to back (a
    # burst of decisions) starves the others (the outbox dispatcher) for seconds. Threads of one
    # process queue on this lock instead and are woken as soon as the writer is done; after
    # GATE_TIMEOUT_SECONDS a waiter goes on without it and SQLite's own lock decides, as before.
    gate = threading.Lock()
    event.remove(engine, "begin", _sqlite_begin_immediate)

    @event.listens_for(engine, "begin")
    def _enter(conn: Any) -> None:
        conn.info["writer_gate"] = gate.acquire(timeout=GATE_TIMEOUT_SECONDS)
        try:
            _sqlite_begin_immediate(conn)
        except BaseException:
            _leave(conn)
            raise

    def _leave(conn: Any) -> None:
        if conn.info.pop("writer_gate", False):
            gate.release()

    event.listen(engine, "commit", _leave)
    event.listen(engine, "rollback", _leave)


def make_engine(url: str) -> Engine:
    """Create an engine for the gateway's database (SQLite embedded or PostgreSQL)."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)

        @event.listens_for(engine, "connect")
        def _no_pysqlite_autobegin(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None

        event.listen(engine, "begin", _sqlite_begin_immediate)
        _add_writer_gate(engine)
        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=10)


def is_sqlite(engine: Engine) -> bool:
    """True for the embedded SQLite store."""
    return engine.dialect.name == "sqlite"
