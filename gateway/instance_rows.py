"""The rows a received instance writes: the instance, its DICOMweb index row and its study.

The statements are built once and run on the database driver's cursor (`DriverStatement`):
constructing and executing a statement through SQLAlchemy per instance cost more than the
database's own work. Values travel as bound parameters. The rules of recording (versions,
duplicates, quiet periods, audit) are `gateway.ingest`'s; this module only reads and writes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import Connection, Integer, bindparam, case, func, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.sql.dml import Insert

from gateway.dicom_header import ParsedHeader
from gateway.domain.model import StoredInstance, StudyState
from gateway.persistence.driver_statement import DriverStatement
from gateway.persistence.tables import instance_attributes, instances, studies

# Study attributes taken from the first instance that carries them.
_FIRST_VALUE_WINS = ("patient_id", "patient_name", "accession_number", "encounter_id", "modality")

# The statements of the record path are built once: constructing and hashing a statement per
# instance cost more than running it. Values travel as bound parameters.
_LATEST_VERSION = (
    select(instances.c.version)
    .where(instances.c.sop_instance_uid == bindparam("sop_uid"))
    .order_by(instances.c.version.desc())
    .limit(1)
)
_EARLIER_COLUMNS = tuple(c.name for c in instances.columns)
_EARLIER = DriverStatement(
    select(instances).where(instances.c.sop_instance_uid == bindparam("sop_uid"))
)
_INSERT_INSTANCE = DriverStatement(insert(instances))
_INSERT_ATTRIBUTES = DriverStatement(insert(instance_attributes))
_STUDY = DriverStatement(
    select(
        studies.c.state,
        studies.c.modality,
        studies.c.complete_by,
        studies.c.expected_instances,
    ).where(studies.c.study_instance_uid == bindparam("study_uid"))
)
_COMPLETE_ON_COUNT = DriverStatement(
    update(studies)
    .where(
        studies.c.study_instance_uid == bindparam("study_uid"),
        studies.c.expected_instances.is_not(None),
        studies.c.instance_count >= studies.c.expected_instances,
    )
    .values(stable_due_at=bindparam("now"))
)


def _upsert_study_statement(dialect_insert: Callable[..., Insert]) -> Insert:
    # postgresql.insert and sqlite.insert share on_conflict_do_update and excluded.
    stmt: Any = dialect_insert(studies)
    excluded = stmt.excluded
    receiving = studies.c.state == StudyState.RECEIVING.value
    keep_first = {
        name: case((studies.c[name] == "", excluded[name]), else_=studies.c[name])
        for name in _FIRST_VALUE_WINS
    }
    # Any new instance (re-)opens the study: a scored study is scored again, and a study being
    # scored loses its lease so the scoring step's result for the older content is discarded.
    upsert: Insert = stmt.on_conflict_do_update(
        index_elements=[studies.c.study_instance_uid],
        set_={
            **keep_first,
            "state": StudyState.RECEIVING.value,
            "instance_count": studies.c.instance_count + bindparam("added", type_=Integer),
            "last_received_at": excluded.last_received_at,
            "stable_due_at": excluded.stable_due_at,
            "lease_owner": None,
            "lease_until": None,
            "updated_at": excluded.updated_at,
            "expected_instances": func.coalesce(
                excluded.expected_instances, studies.c.expected_instances
            ),
            # A re-opened study gets a fresh maximum wait; a receiving one keeps its own.
            "complete_by": case((receiving, studies.c.complete_by), else_=excluded.complete_by),
            "claim_attempts": 0,
        },
    )
    return upsert


_UPSERT_STUDY = {
    "postgresql": DriverStatement(_upsert_study_statement(postgresql.insert)),
    "sqlite": DriverStatement(_upsert_study_statement(sqlite.insert)),
}


class StudyNow(NamedTuple):
    """The study row as the upsert of a received instance finds it."""

    state: str
    modality: str
    complete_by: datetime | None
    expected_instances: int | None


def latest_version(conn: Connection, sop_uid: str) -> int:
    """The highest version recorded of a SOP Instance UID (0 when none)."""
    latest = conn.execute(_LATEST_VERSION, {"sop_uid": sop_uid}).scalar()
    return int(latest or 0)


def earlier_versions(conn: Connection, sop_uid: str) -> list[dict[str, Any]]:
    """Every recorded version of a SOP Instance UID, as `instances` rows."""
    return [
        dict(zip(_EARLIER_COLUMNS, row, strict=True))
        for row in _EARLIER.rows(conn, {"sop_uid": sop_uid})
    ]


def insert_instance(conn: Connection, row: Mapping[str, Any]) -> None:
    """Write an `instances` row."""
    _INSERT_INSTANCE.execute(conn, row)


def insert_attributes(conn: Connection, row: Mapping[str, Any]) -> None:
    """Write the DICOMweb index row of an instance version."""
    _INSERT_ATTRIBUTES.execute(conn, row)


def study_now(conn: Connection, study_uid: str) -> StudyNow | None:
    """The study's row as an arriving instance finds it, or None for a new study."""
    found = _STUDY.rows(conn, {"study_uid": study_uid})
    return StudyNow(*found[0]) if found else None


def upsert_study(conn: Connection, values: Mapping[str, Any]) -> None:
    """Create the study or count the instance into it and re-open it (`added`: 1 or 0)."""
    _UPSERT_STUDY["postgresql" if conn.dialect.name == "postgresql" else "sqlite"].execute(
        conn, values
    )


def complete_on_count(conn: Connection, study_uid: str, now: datetime) -> None:
    """Expected count reached → stable now (on the row the upsert has locked)."""
    _COMPLETE_ON_COUNT.execute(conn, {"study_uid": study_uid, "now": now})


def instance_row(stored: StoredInstance, version: int) -> dict[str, Any]:
    """The `instances` row of a stored instance (without its transfer columns)."""
    return {
        "sop_instance_uid": stored.sop_instance_uid,
        "version": version,
        "sop_class_uid": stored.sop_class_uid,
        "study_instance_uid": stored.study_instance_uid,
        "series_instance_uid": stored.series_instance_uid,
        "transfer_syntax_uid": stored.transfer_syntax_uid,
        "modality": stored.modality,
        "path": stored.path,
        "size": stored.size,
        "sha256": stored.sha256,
        "calling_ae": stored.calling_ae,
        "received_at": stored.received_at,
    }


def stored_instance(row: Mapping[str, Any], header: ParsedHeader) -> StoredInstance:
    """The stored instance an `instances` row describes, patient attributes from `header`."""
    return StoredInstance(
        sop_instance_uid=row["sop_instance_uid"],
        sop_class_uid=row["sop_class_uid"],
        study_instance_uid=row["study_instance_uid"],
        series_instance_uid=row["series_instance_uid"],
        transfer_syntax_uid=row["transfer_syntax_uid"],
        path=row["path"],
        size=row["size"],
        sha256=row["sha256"],
        modality=row["modality"],
        patient_id=header.patient_id,
        patient_name=header.patient_name,
        accession_number=header.accession_number,
        calling_ae=row["calling_ae"],
        received_at=row["received_at"],
    )
