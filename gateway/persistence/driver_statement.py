"""Statements of the ingest hot path, compiled once and run on the database driver's cursor.

SQLAlchemy's execution costs tens of microseconds of Python per statement (cache lookup,
parameter construction, result metadata) on top of the driver's own work, and ingest runs six
statements per received instance under the interpreter lock that the DICOM associations share.
Here each statement is compiled once per dialect and parameter set by SQLAlchemy itself, and its
values go through the same type processors SQLAlchemy would apply, in the caller's transaction.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.engine import Dialect
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.expression import Executable, Select

Processor = Callable[[Any], Any]


@dataclass(frozen=True, slots=True)
class _Compiled:
    sql: str
    names: tuple[str, ...]  # positional order; empty for a named paramstyle
    fixed: Mapping[str, Any]  # values the statement carries itself (constants)
    binds: tuple[tuple[str, Processor | None], ...]  # every parameter the caller passes
    results: tuple[Processor | None, ...]


class DriverStatement:
    """One statement, run on the driver's cursor with SQLAlchemy's compilation and types."""

    def __init__(self, statement: Executable) -> None:
        self._statement = statement
        self._compiled: dict[tuple[str, tuple[str, ...]], _Compiled] = {}
        self._lock = threading.Lock()

    def execute(self, conn: Connection, params: Mapping[str, Any]) -> None:
        """Run with `params` in the connection's transaction."""
        cursor = self._run(conn, self._compile(conn.dialect, tuple(params)), params)
        try:
            if cursor.description is not None:
                cursor.fetchall()  # a RETURNING clause added by the dialect: read, not needed
        finally:
            cursor.close()

    def rows(self, conn: Connection, params: Mapping[str, Any]) -> list[tuple[Any, ...]]:
        """The rows of a query, each value converted as SQLAlchemy's result would give it."""
        compiled = self._compile(conn.dialect, tuple(params))
        cursor = self._run(conn, compiled, params)
        try:
            fetched = cursor.fetchall()
        finally:
            cursor.close()
        return [_converted(row, compiled.results) for row in fetched]

    @staticmethod
    def _run(conn: Connection, compiled: _Compiled, params: Mapping[str, Any]) -> Any:
        values = dict(compiled.fixed)
        for name, process in compiled.binds:
            value = params[name]
            values[name] = value if process is None else process(value)
        cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        if compiled.names:
            cursor.execute(compiled.sql, [values[name] for name in compiled.names])
        else:
            cursor.execute(compiled.sql, values)
        return cursor

    def _compile(self, dialect: Dialect, keys: tuple[str, ...]) -> _Compiled:
        cache_key = (dialect.name, keys)
        found = self._compiled.get(cache_key)
        if found is None:
            with self._lock:
                found = self._compiled.get(cache_key) or _compile(self._statement, dialect, keys)
                self._compiled[cache_key] = found
        return found


def _compile(statement: Executable, dialect: Dialect, keys: Sequence[str]) -> _Compiled:
    compiled = statement.compile(dialect=dialect, column_keys=list(keys))  # type: ignore[attr-defined]
    assert isinstance(compiled, SQLCompiler)
    if compiled.literal_execute_params or compiled.post_compile_params:
        raise ValueError("statements with expanding parameters are not run on the driver")
    missing = [name for name in keys if name not in compiled.binds]
    if missing:
        raise ValueError(f"parameters not in the statement: {missing}")
    fixed = {
        name: _processed(bind.type, dialect, bind.effective_value)
        for name, bind in compiled.binds.items()
        if name not in keys
    }
    binds = tuple(
        (name, compiled.binds[name].type.dialect_impl(dialect).bind_processor(dialect))
        for name in keys
    )
    results: tuple[Processor | None, ...] = ()
    if isinstance(statement, Select):
        results = tuple(
            column.type.dialect_impl(dialect).result_processor(dialect, None)
            for column in statement.selected_columns
        )
    names = tuple(compiled.positiontup or ()) if dialect.positional else ()
    return _Compiled(compiled.string, names, fixed, binds, results)


def _processed(type_: Any, dialect: Dialect, value: Any) -> Any:
    process = type_.dialect_impl(dialect).bind_processor(dialect)
    return value if process is None else process(value)


def _converted(row: Sequence[Any], results: Sequence[Processor | None]) -> tuple[Any, ...]:
    if not results:
        return tuple(row)
    return tuple(
        value if process is None else process(value)
        for value, process in zip(row, results, strict=True)
    )
