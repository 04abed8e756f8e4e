"""Outbox: index for the per-destination, per-study ordering rule of the dispatcher.

Revision ID: 0601
Revises: 0001
Create Date: 2026-11-30 00:25:00.000000
"""

from __future__ import annotations

from alembic import op

revision = "0601"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Apply this revision."""
    op.create_index(
        "ix_outbox_destination_study",
        "outbox",
        ["destination", "study_instance_uid", "state"],
    )


def downgrade() -> None:
    """Revert this revision."""
    op.drop_index("ix_outbox_destination_study", table_name="outbox")
