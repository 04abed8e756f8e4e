"""Audit trail: signed checkpoints, retention purges, legal holds and the search index.

Revision ID: 0701
Revises: 0001
Create Date: 2026-11-30 00:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from gateway.persistence.tables import UtcDateTime
from gateway.persistence.triggers import drop_retention_triggers, install_retention_triggers

revision = "0701"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Apply this revision."""
    op.create_table(
        "audit_checkpoint",
        sa.Column("number", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("signed_at", UtcDateTime(), nullable=False),
        sa.Column("key_id", sa.String(length=64), nullable=False),
        sa.Column("retained", sa.String(length=64), nullable=False),
        sa.Column("jws", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("number", name=op.f("pk_audit_checkpoint")),
    )
    op.create_table(
        "audit_purge",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("through_seq", sa.BigInteger(), nullable=False),
        sa.Column("checkpoint_number", sa.Integer(), nullable=False),
        sa.Column("before", UtcDateTime(), nullable=False),
        sa.Column("removed", sa.BigInteger(), nullable=False),
        sa.Column("purged_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_purge")),
    )
    op.create_table(
        "audit_legal_hold",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("patient_id", sa.String(length=64), nullable=False),
        sa.Column("period_start", UtcDateTime(), nullable=True),
        sa.Column("period_end", UtcDateTime(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("created_by", sa.String(length=128), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("released_at", UtcDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_legal_hold")),
    )
    op.create_table(
        "audit_index",
        sa.Column("param", sa.String(length=16), nullable=False),
        sa.Column("value", sa.String(length=255), nullable=False),
        sa.Column("recorded", UtcDateTime(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("param", "value", "recorded", "seq", name=op.f("pk_audit_index")),
    )
    with op.batch_alter_table("audit_index", schema=None) as batch_op:
        batch_op.create_index("ix_audit_index_seq", ["seq"], unique=False)
    install_retention_triggers(op.get_bind())


def downgrade() -> None:
    """Revert this revision."""
    drop_retention_triggers(op.get_bind())
    with op.batch_alter_table("audit_index", schema=None) as batch_op:
        batch_op.drop_index("ix_audit_index_seq")
    op.drop_table("audit_index")
    op.drop_table("audit_legal_hold")
    op.drop_table("audit_purge")
    op.drop_table("audit_checkpoint")
