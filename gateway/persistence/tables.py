"""The gateway's tables (SQLAlchemy Core). Alembic migrations under `migrations/` create them.

Timestamps are timezone-aware UTC. JSON documents (FHIR resources) are stored as text of their
canonical JSON so that the bytes hashed are the bytes kept.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
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
    true,
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
    # The association or STOW-RS request it came in; its DICOM Instances Transferred summary
    # marks it audited (a crash leaves it unmarked and the next start writes the summary).
    Column("transfer_id", String(80), nullable=True),
    Column("transfer_audited", Boolean, nullable=False, default=True, server_default=true()),
    UniqueConstraint("sop_instance_uid", "version"),
    Index("ix_instances_study", "study_instance_uid"),
)

# The DICOMweb index: QIDO-RS matching keys and the WADO-RS metadata of each stored version.
instance_attributes = Table(
    "instance_attributes",
    metadata,
    Column("sop_instance_uid", UID, primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("study_instance_uid", UID, nullable=False),
    Column("series_instance_uid", UID, nullable=False),
    Column("sop_class_uid", UID, nullable=False),
    Column("study_date", String(8), nullable=False, default=""),
    Column("study_time", String(16), nullable=False, default=""),
    Column("accession_number", String(64), nullable=False, default=""),
    Column("patient_id", String(64), nullable=False, default=""),
    Column("patient_name", String(200), nullable=False, default=""),
    Column("study_id", String(16), nullable=False, default=""),
    Column("study_description", String(64), nullable=False, default=""),
    Column("referring_physician_name", String(200), nullable=False, default=""),
    Column("modality", String(16), nullable=False, default=""),
    Column("series_number", Integer, nullable=True),
    Column("series_description", String(64), nullable=False, default=""),
    Column("instance_number", Integer, nullable=True),
    Column("dicom_json", Text, nullable=False),  # PS3.18 F.2 without bulk data
    Index("ix_instance_attributes_study", "study_instance_uid", "series_instance_uid"),
    Index("ix_instance_attributes_patient", "patient_id"),
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
    # Number of Study Related Instances (0020,1208) when a header states it: complete on reaching.
    Column("expected_instances", Integer, nullable=True),
    # The maximum wait: stable at this moment at the latest, however the instances trickle in.
    Column("complete_by", UtcDateTime(), nullable=True),
    # Scoring passes claimed and not finished; past the limit the study is set aside.
    Column("claim_attempts", Integer, nullable=False, default=0, server_default="0"),
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
    # Search columns (FHIR Task search parameters) and the SLA deadline, from revision 0501.
    Column("business_status", String(64), nullable=True),
    Column("code", String(64), nullable=True),
    Column("encounter_id", String(64), nullable=True),
    Column("part_of", String(64), nullable=True),
    Column("performer_type", String(64), nullable=True),
    Column("last_modified", UtcDateTime(), nullable=True),
    Column("deadline", UtcDateTime(), nullable=True),  # Task.restriction.period.end
    Index("ix_tasks_status", "status"),
    Index("ix_tasks_study", "study_instance_uid", "use_case"),
    Index("ix_tasks_owner", "owner", "status"),
    Index("ix_tasks_business_status", "business_status", "last_updated"),
    # Covers the worklist query (status filter, priority/last-updated order) without the documents.
    Index("ix_tasks_worklist", "status", "priority", "last_updated", "id"),
    Index("ix_tasks_patient", "patient_id"),
    Index("ix_tasks_last_updated", "last_updated"),
    Index("ix_tasks_status_deadline", "status", "deadline"),
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
    # The ordering rule looks for earlier pending rows of the same destination and study.
    Index("ix_outbox_destination_study", "destination", "study_instance_uid", "state"),
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

# Signed checkpoints of the audit chain (`gateway.audit.checkpoint`): each signs the hash at one
# `seq` with an Ed25519 key; append-only like the chain, numbered without gaps and linked.
audit_checkpoint = Table(
    "audit_checkpoint",
    metadata,
    Column("number", Integer, primary_key=True, autoincrement=False),
    Column("seq", BigInteger, nullable=False),
    Column("hash", String(64), nullable=False),
    Column("kind", String(16), nullable=False),  # periodic | rotation | purge-bridge | manual
    Column("signed_at", UtcDateTime(), nullable=False),
    Column("key_id", String(64), nullable=False),
    Column("retained", String(64), nullable=False, default=""),
    Column("jws", Text, nullable=False),  # compact JWS (EdDSA) over the checkpoint's payload
)

# Each retention purge: every record up to `through_seq` not on legal hold was removed; the
# purge-bridge checkpoint `checkpoint_number` lets the rest of the chain verify.
audit_purge = Table(
    "audit_purge",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("through_seq", BigInteger, nullable=False),
    Column("checkpoint_number", Integer, nullable=False),
    Column("before", UtcDateTime(), nullable=False),
    Column("removed", BigInteger, nullable=False),
    Column("purged_at", UtcDateTime(), nullable=False),
)

# Legal holds keep audit records past retention: by patient, by period, or both.
audit_legal_hold = Table(
    "audit_legal_hold",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("patient_id", String(64), nullable=False, default=""),
    Column("period_start", UtcDateTime(), nullable=True),
    Column("period_end", UtcDateTime(), nullable=True),
    Column("reason", Text, nullable=False),
    Column("created_by", String(128), nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("released_at", UtcDateTime(), nullable=True),
)

# Search index of the audit trail: one row per (search parameter, value) of a record, e.g.
# ("agent", "Practitioner/1"), ("entity", "Task/7"), ("type", "rest"). Not hashed: a search aid
# whose hits are always read back from the hashed resource.
audit_index = Table(
    "audit_index",
    metadata,
    Column("param", String(16), primary_key=True),
    Column("value", String(255), primary_key=True),
    Column("recorded", UtcDateTime(), primary_key=True),
    Column("seq", BigInteger, primary_key=True),
    Index("ix_audit_index_seq", "seq"),
)


# Reviewer credentials (re-credentialing): a reviewer may decide only while credentialed.
reviewer_credentials = Table(
    "reviewer_credentials",
    metadata,
    Column("practitioner", String(128), primary_key=True),  # e.g. Practitioner/dr-1
    Column("roles", String(200), nullable=False),  # space-separated roles it covers
    Column("valid_until", UtcDateTime(), nullable=False),
    Column("granted_by", String(128), nullable=False),
    Column("granted_at", UtcDateTime(), nullable=False),
)

# Safety-committee decisions that switch automation on (who, when, scope, expiry); none: off.
safety_decisions = Table(
    "safety_decisions",
    metadata,
    Column(
        "id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    Column("switch", String(64), nullable=False),
    Column("scope", String(128), nullable=False),  # use case (or "*")
    Column("decided_by", String(200), nullable=False),
    Column("decided_at", UtcDateTime(), nullable=False),
    Column("valid_until", UtcDateTime(), nullable=False),
    Column("reference", Text, nullable=False),  # minutes or decision document
    Column("recorded_by", String(128), nullable=False),
    Column("recorded_at", UtcDateTime(), nullable=False),
    Index("ix_safety_decisions_switch", "switch", "scope"),
)

# FHIR Subscriptions (R4 backport, rest-hook): the subscriptions, their numbered events, and how
# far the notifier has read the audit trail (the event source).
subscriptions = Table(
    "subscriptions",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("status", String(16), nullable=False),  # requested | active | error | off
    Column("request", Text, nullable=False),  # the validated SubscriptionRequest, JSON
    Column("created_by", String(128), nullable=False),
    Column("events_since_start", BigInteger, nullable=False, default=0),
    Column("error", Text, nullable=False, default=""),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("last_sent_at", UtcDateTime(), nullable=True),
)

subscription_events = Table(
    "subscription_events",
    metadata,
    Column("subscription_id", String(64), primary_key=True),
    Column("event_number", BigInteger, primary_key=True),
    Column("focus", String(128), nullable=False),
    Column("topic_event", String(16), nullable=False),  # created | completed
    Column("occurred_at", UtcDateTime(), nullable=False),
    Column("sent_at", UtcDateTime(), nullable=True),
    Index("ix_subscription_events_unsent", "subscription_id", "sent_at"),
)

subscription_cursor = Table(
    "subscription_cursor",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("audit_seq", BigInteger, nullable=False),
)

# Backend Services client assertions seen (SMART: a replayed `jti` SHALL be refused), shared by
# every replica; rows are dropped once their assertion has expired.
client_assertions = Table(
    "client_assertions",
    metadata,
    Column("client_id", String(128), primary_key=True),
    Column("jti", String(255), primary_key=True),
    Column("expires_at", UtcDateTime(), nullable=False),
    Index("ix_client_assertions_expires", "expires_at"),
)

# Derived search index over audit_log (FHIR search of Provenance and AuditEvent); rebuilt from the
# log by catching up on sequence numbers, so it never changes the append path.
audit_search_index = Table(
    "audit_search_index",
    metadata,
    Column("seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    Column("name", String(32), primary_key=True),
    Column("value", String(255), primary_key=True),
    Index("ix_audit_search_index_value", "name", "value"),
)

# FHIR Device of each governed model version that was ever served (`scoring.governance`): written
# on promotion, `status` turned inactive when the alias moves away, read by `/fhir/Device`.
model_devices = Table(
    "model_devices",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("model_name", String(128), nullable=False),
    Column("model_version", String(32), nullable=False),
    Column("model_sha256", String(64), nullable=False),
    Column("use_case", String(64), nullable=False),
    Column("status", String(16), nullable=False),  # Device.status: active | inactive
    Column("version_id", Integer, nullable=False),
    Column("last_updated", UtcDateTime(), nullable=False),
    Column("resource", Text, nullable=False),  # canonical JSON of the current version
    UniqueConstraint("model_name", "model_version"),
)
