"""Task search columns and SLA deadline, reviewer credentials, safety decisions, audit search index,
FHIR Subscriptions.

Revision ID: 0501
Revises: 0001
Create Date: 2026-11-30 00:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0501"
down_revision = "0001"
branch_labels = None
depends_on = None

_TASK_COLUMNS = (
    ("business_status", sa.String(length=64)),
    ("code", sa.String(length=64)),
    ("encounter_id", sa.String(length=64)),
    ("part_of", sa.String(length=64)),
    ("performer_type", sa.String(length=64)),
    ("last_modified", sa.DateTime(timezone=True)),
    ("deadline", sa.DateTime(timezone=True)),
)


def upgrade() -> None:
    """Apply this revision."""
    with op.batch_alter_table("tasks") as batch:
        for name, type_ in _TASK_COLUMNS:
            batch.add_column(sa.Column(name, type_, nullable=True))
    op.create_index("ix_tasks_owner", "tasks", ["owner", "status"])
    op.create_index("ix_tasks_business_status", "tasks", ["business_status", "last_updated"])
    op.create_index("ix_tasks_worklist", "tasks", ["status", "priority", "last_updated", "id"])
    op.create_index("ix_tasks_patient", "tasks", ["patient_id"])
    op.create_index("ix_tasks_last_updated", "tasks", ["last_updated"])
    op.create_index("ix_tasks_status_deadline", "tasks", ["status", "deadline"])
    op.create_table(
        "reviewer_credentials",
        sa.Column("practitioner", sa.String(length=128), nullable=False),
        sa.Column("roles", sa.String(length=200), nullable=False),
        sa.Column("valid_until", sa.DateTime(timezone=True), nullable=False),
        sa.Column("granted_by", sa.String(length=128), nullable=False),
        sa.Column("granted_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("practitioner", name=op.f("pk_reviewer_credentials")),
    )
    op.create_table(
        "safety_decisions",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("switch", sa.String(length=64), nullable=False),
        sa.Column("scope", sa.String(length=128), nullable=False),
        sa.Column("decided_by", sa.String(length=200), nullable=False),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("valid_until", sa.DateTime(timezone=True), nullable=False),
        sa.Column("reference", sa.Text(), nullable=False),
        sa.Column("recorded_by", sa.String(length=128), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_safety_decisions")),
    )
    op.create_index("ix_safety_decisions_switch", "safety_decisions", ["switch", "scope"])
    op.create_table(
        "audit_search_index",
        sa.Column("seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("name", sa.String(length=32), nullable=False),
        sa.Column("value", sa.String(length=255), nullable=False),
        sa.PrimaryKeyConstraint("seq", "name", "value", name=op.f("pk_audit_search_index")),
    )
    op.create_index("ix_audit_search_index_value", "audit_search_index", ["name", "value"])
    op.create_table(
        "subscriptions",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("request", sa.Text(), nullable=False),
        sa.Column("created_by", sa.String(length=128), nullable=False),
        sa.Column("events_since_start", sa.BigInteger(), nullable=False),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_subscriptions")),
    )
    op.create_table(
        "subscription_events",
        sa.Column("subscription_id", sa.String(length=64), nullable=False),
        sa.Column("event_number", sa.BigInteger(), nullable=False),
        sa.Column("focus", sa.String(length=128), nullable=False),
        sa.Column("topic_event", sa.String(length=16), nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint(
            "subscription_id", "event_number", name=op.f("pk_subscription_events")
        ),
    )
    op.create_index(
        "ix_subscription_events_unsent", "subscription_events", ["subscription_id", "sent_at"]
    )
    op.create_table(
        "client_assertions",
        sa.Column("client_id", sa.String(length=128), nullable=False),
        sa.Column("jti", sa.String(length=255), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("client_id", "jti", name=op.f("pk_client_assertions")),
    )
    op.create_index("ix_client_assertions_expires", "client_assertions", ["expires_at"])
    op.create_table(
        "subscription_cursor",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("audit_seq", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_subscription_cursor")),
    )


def downgrade() -> None:
    """Revert this revision."""
    op.drop_table("subscription_cursor")
    op.drop_index("ix_client_assertions_expires", table_name="client_assertions")
    op.drop_table("client_assertions")
    op.drop_index("ix_subscription_events_unsent", table_name="subscription_events")
    op.drop_table("subscription_events")
    op.drop_table("subscriptions")
    op.drop_index("ix_audit_search_index_value", table_name="audit_search_index")
    op.drop_table("audit_search_index")
    op.drop_index("ix_safety_decisions_switch", table_name="safety_decisions")
    op.drop_table("safety_decisions")
    op.drop_table("reviewer_credentials")
    for name in ("ix_tasks_status_deadline", "ix_tasks_last_updated", "ix_tasks_patient",
                 "ix_tasks_business_status", "ix_tasks_worklist", "ix_tasks_owner"):  # fmt: skip
        op.drop_index(name, table_name="tasks")
    with op.batch_alter_table("tasks") as batch:
        for name, _ in reversed(_TASK_COLUMNS):
            batch.drop_column(name)
