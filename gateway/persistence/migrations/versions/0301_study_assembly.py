"""Ingest: study completion columns and the DICOMweb index of stored instances.

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
    op.add_column("instances", sa.Column("transfer_id", sa.String(length=80), nullable=True))
    op.add_column(
        "instances",
        sa.Column("transfer_audited", sa.Boolean(), nullable=False, server_default=sa.true()),
    )
    op.create_table(
        "instance_attributes",
        sa.Column("sop_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("study_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("series_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("sop_class_uid", sa.String(length=64), nullable=False),
        sa.Column("study_date", sa.String(length=8), nullable=False),
        sa.Column("study_time", sa.String(length=16), nullable=False),
        sa.Column("accession_number", sa.String(length=64), nullable=False),
        sa.Column("patient_id", sa.String(length=64), nullable=False),
        sa.Column("patient_name", sa.String(length=200), nullable=False),
        sa.Column("study_id", sa.String(length=16), nullable=False),
        sa.Column("study_description", sa.String(length=64), nullable=False),
        sa.Column("referring_physician_name", sa.String(length=200), nullable=False),
        sa.Column("modality", sa.String(length=16), nullable=False),
        sa.Column("series_number", sa.Integer(), nullable=True),
        sa.Column("series_description", sa.String(length=64), nullable=False),
        sa.Column("instance_number", sa.Integer(), nullable=True),
        sa.Column("dicom_json", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("sop_instance_uid", "version", name=op.f("pk_instance_attributes")),
    )
    op.create_index(
        "ix_instance_attributes_study",
        "instance_attributes",
        ["study_instance_uid", "series_instance_uid"],
    )
    op.create_index("ix_instance_attributes_patient", "instance_attributes", ["patient_id"])


def downgrade() -> None:
    """Revert this revision."""
    op.drop_table("instance_attributes")
    with op.batch_alter_table("instances") as batch:
        batch.drop_column("transfer_audited")
        batch.drop_column("transfer_id")
    with op.batch_alter_table("studies") as batch:
        batch.drop_column("claim_attempts")
        batch.drop_column("complete_by")
        batch.drop_column("expected_instances")
