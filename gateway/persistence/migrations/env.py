"""Alembic environment: runs on the connection that `gateway.persistence.migrate` passes."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from gateway.persistence.tables import metadata

config = context.config


def _run(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is None:
    raise RuntimeError("migrations run through gateway.persistence.migrate only")
_run(connection)
