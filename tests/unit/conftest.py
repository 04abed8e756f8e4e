"""Fixtures shared by the unit tests of ingest and assembly."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Engine

from gateway.audit.trail import ensure_head
from gateway.persistence.db import make_engine
from gateway.persistence.tables import metadata


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    """The gateway's tables and an empty audit chain (modules with other needs define their own)."""
    engine = make_engine(database_url)
    with engine.begin() as conn:
        metadata.create_all(conn)
        ensure_head(conn)
    try:
        yield engine
    finally:
        engine.dispose()
