"""The gateway's tables (SQLAlchemy Core). Alembic migrations under `migrations/` create them.

Timestamps are timezone-aware UTC. JSON documents (FHIR resources) are stored as text of their
canonical JSON so that the bytes hashed are the bytes kept.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator


class UtcDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC on both databases (SQLite keeps no zone, so UTC is implied there)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> Any:
        """Refuse naive values; store UTC."""
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Always hand back an aware UTC datetime."""
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

UID = String(64)

instances = Table(
    "instances",
    metadata,
    Column(
        "id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    Column("sop_instance_uid", UID, nullable=False),
    Column("version", Integer, nullable=False, default=1),
    Column("sop_class_uid", UID, nullable=False),
    Column("study_instance_uid", UID, nullable=False),
    Column("series_instance_uid", UID, nullable=False),
    Column("transfer_syntax_uid", UID, nullable=False),
    Column("modality", String(16), nullable=False, default=""),
    Column("path", Text, nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("calling_ae", String(16), nullable=False, default=""),
    Column("received_at", UtcDateTime(), nullable=False),
    UniqueConstraint("sop_instance_uid", "version"),
    Index("ix_instances_study", "study_instance_uid"),
)

studies = Table(
    "studies",
    metadata,
    Column("study_instance_uid", UID, primary_key=True),
    Column("patient_id", String(64), nullable=False, default=""),
    Column("patient_name", String(200), nullable=False, default=""),
    Column("accession_number", String(64), nullable=False, default=""),
    Column("encounter_id", String(64), nullable=False, default=""),
    Column("modality", String(16), nullable=False, default=""),
    Column("state", String(32), nullable=False),
    Column("instance_count", Integer, nullable=False, default=0),
    Column("first_received_at", UtcDateTime(), nullable=False),
    Column("last_received_at", UtcDateTime(), nullable=False),
    # When the study becomes stable unless another instance arrives first.
    Column("stable_due_at", UtcDateTime(), nullable=False),
    # Lease of the worker scoring the study; an expired lease is taken over by another replica.
    Column("lease_owner", String(64), nullable=True),
    Column("lease_until", UtcDateTime(), nullable=True),
    Column("score_generation", Integer, nullable=False, default=0),
    Column("updated_at", UtcDateTime(), nullable=False),
    Index("ix_studies_due", "state", "stable_due_at"),
)

scores = Table(
    "scores",
    metadata,
    Column(
        "id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    Column("study_instance_uid", UID, nullable=False),
    Column("use_case", String(64), nullable=False),
    Column("outcome", String(32), nullable=False),  # "scored" | "standard-triage"
    Column("score", Float, nullable=True),
    Column("label", String(64), nullable=False, default=""),
    Column("model_name", String(128), nullable=True),
    Column("model_version", String(32), nullable=True),
    Column("model_sha256", String(64), nullable=True),
    Column("thresholds", Text, nullable=False),  # JSON
    Column("input_hash", String(64), nullable=False),
    Column("fallback_reason", Text, nullable=False, default=""),
    Column("created_at", UtcDateTime(), nullable=False),
    Index("ix_scores_study", "study_instance_uid"),
)

tasks = Table(
    "tasks",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("version_id", Integer, nullable=False),
    Column("status", String(32), nullable=False),
    Column("priority", String(16), nullable=False),
    Column("study_instance_uid", UID, nullable=False),
    Column("use_case", String(64), nullable=False),
    Column("patient_id", String(64), nullable=False, default=""),
    Column("owner", String(128), nullable=True),
    Column("last_updated", UtcDateTime(), nullable=False),
    Column("resource", Text, nullable=False),  # current version, canonical JSON
    Index("ix_tasks_status", "status"),
    Index("ix_tasks_study", "study_instance_uid", "use_case"),
)

task_history = Table(
    "task_history",
    metadata,
    Column("task_id", String(64), primary_key=True),
    Column("version_id", Integer, primary_key=True),
    Column("last_updated", UtcDateTime(), nullable=False),
    Column("resource", Text, nullable=False),
)

outbox = Table(
    "outbox",
    metadata,
    Column(
        "id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    Column("destination", String(64), nullable=False),
    Column("idempotency_key", String(128), nullable=False),
    Column("study_instance_uid", UID, nullable=False),
    Column("kind", String(32), nullable=False),  # e.g. "hl7-omi-o23"
    Column("payload", Text, nullable=False),
    Column("state", String(16), nullable=False),  # pending | delivered | dead
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_attempt_at", UtcDateTime(), nullable=False),
    Column("lease_owner", String(64), nullable=True),
    Column("lease_until", UtcDateTime(), nullable=True),
    Column("last_error", Text, nullable=False, default=""),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("delivered_at", UtcDateTime(), nullable=True),
    UniqueConstraint("destination", "idempotency_key"),
    Index("ix_outbox_due", "state", "next_attempt_at"),
)

# Append-only, hash-chained audit trail of AuditEvent and Provenance resources. UPDATE and DELETE
# are refused by triggers created in the migration.
audit_log = Table(
    "audit_log",
    metadata,
    Column(
        "seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=False
    ),
    Column("resource_type", String(32), nullable=False),
    Column("resource_id", String(64), nullable=False),
    Column("recorded", UtcDateTime(), nullable=False),
    Column("patient_id", String(64), nullable=False, default=""),
    Column("resource", Text, nullable=False),  # canonical JSON
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
    UniqueConstraint("resource_type", "resource_id"),
    Index("ix_audit_log_patient", "patient_id", "recorded"),
    Index("ix_audit_log_type_recorded", "resource_type", "recorded"),
)

# One row: the head of the chain. Appending starts with `UPDATE ... RETURNING` on it, which takes
# the write lock on both databases and so serialises appends without a separate lock service.
audit_head = Table(
    "audit_head",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("seq", BigInteger, nullable=False),
    Column("hash", String(64), nullable=False),
)
