"""Study assembly: expected instance count, maximum wait and failed scoring passes per study.

Revision ID: 0301
Revises: 0001
Create Date: 2026-11-30 00:30:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0301"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Apply this revision."""
    op.add_column("studies", sa.Column("expected_instances", sa.Integer(), nullable=True))
    op.add_column("studies", sa.Column("complete_by", sa.DateTime(timezone=True), nullable=True))
    op.add_column(
        "studies",
        sa.Column("claim_attempts", sa.Integer(), nullable=False, server_default="0"),
    )


def downgrade() -> None:
    """Revert this revision."""
    with op.batch_alter_table("studies") as batch:
        batch.drop_column("claim_attempts")
        batch.drop_column("complete_by")
        batch.drop_column("expected_instances")
