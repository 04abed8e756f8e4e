"""An audit trail on each database: the two tables, the append-only triggers and the head."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Engine

from gateway.audit.trail import ensure_head
from gateway.persistence.db import make_engine
from gateway.persistence.tables import (
    audit_checkpoint,
    audit_head,
    audit_index,
    audit_legal_hold,
    audit_log,
    audit_purge,
    metadata,
)
from gateway.persistence.triggers import (
    install_append_only_triggers,
    install_retention_triggers,
)

AUDIT_TABLES = [audit_log, audit_head, audit_checkpoint, audit_purge, audit_legal_hold, audit_index]


def _audit_engine(url: str) -> Iterator[Engine]:
    engine = make_engine(url)
    with engine.begin() as conn:
        metadata.create_all(conn, tables=AUDIT_TABLES)
        install_append_only_triggers(conn)
        install_retention_triggers(conn)
        ensure_head(conn)
    try:
        yield engine
    finally:
        engine.dispose()


@pytest.fixture
def audit_engine(database_url: str) -> Iterator[Engine]:
    """An empty audit trail on SQLite and on PostgreSQL."""
    yield from _audit_engine(database_url)


@pytest.fixture
def pg_audit_engine(postgres_url: str) -> Iterator[Engine]:
    """An empty audit trail on PostgreSQL only."""
    yield from _audit_engine(postgres_url)
