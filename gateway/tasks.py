"""The Task repository: a versioned store over `tasks` (current version) and `task_history`.

Updates are optimistic (FHIR R4 http.html#concurrency): the row changes only when its version is
still the one the caller read, in one `UPDATE … WHERE version_id = :expected`. Both SQLite (writer
lock at BEGIN IMMEDIATE) and PostgreSQL (row lock, WHERE re-checked after the competing commit)
make this exact, so of two racing reviewers exactly one wins and the other gets VersionConflict.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, insert, select, update

from fhir_mapping.canonical import canonical_json
from fhir_mapping.task import parse_instant, task_facts, with_version
from gateway.domain.errors import InvalidInput, NotFound, VersionConflict
from gateway.domain.task_states import TERMINAL
from gateway.persistence.tables import task_history, tasks

MAX_COUNT = 200


def _utcnow() -> datetime:
    return datetime.now(UTC)


class TaskRepository:
    """Create, read, search and optimistically update review Tasks (caller's transaction)."""

    def __init__(self, clock: Callable[[], datetime] = _utcnow) -> None:
        self._clock = clock

    def _columns(self, resource: Mapping[str, Any]) -> dict[str, Any]:
        facts = task_facts(resource)
        return {
            "status": facts.status,
            "priority": facts.priority.value,
            "study_instance_uid": facts.study_instance_uid,
            "use_case": facts.use_case,
            "patient_id": facts.patient_id,
            "owner": facts.owner or None,
            **search_columns(resource),
        }

    def create(self, conn: Connection, resource: Mapping[str, Any]) -> dict[str, Any]:
        """Store a new Task as version 1; returns it with `meta` set."""
        task_id = resource.get("id")
        if not isinstance(task_id, str) or not task_id:
            raise InvalidInput("a Task to create needs an id")
        now = self._clock()
        stored = with_version(resource, 1, now)
        text = canonical_json(stored)
        conn.execute(
            insert(tasks).values(
                id=task_id, version_id=1, last_updated=now, resource=text, **self._columns(stored)
            )
        )
        conn.execute(
            insert(task_history).values(
                task_id=task_id, version_id=1, last_updated=now, resource=text
            )
        )
        return stored

    def read(self, conn: Connection, task_id: str) -> dict[str, Any]:
        """The current version of a Task; NotFound when there is none."""
        row = conn.execute(select(tasks.c.resource).where(tasks.c.id == task_id)).first()
        if row is None:
            raise NotFound(f"Task/{task_id} is not known")
        return _load(row.resource)

    def read_version(self, conn: Connection, task_id: str, version_id: int) -> dict[str, Any]:
        """One historical version of a Task (vread); NotFound when there is none."""
        row = conn.execute(
            select(task_history.c.resource).where(
                task_history.c.task_id == task_id, task_history.c.version_id == version_id
            )
        ).first()
        if row is None:
            raise NotFound(f"Task/{task_id}/_history/{version_id} is not known")
        return _load(row.resource)

    def update(
        self,
        conn: Connection,
        task_id: str,
        resource: Mapping[str, Any],
        if_match_version: int,
    ) -> dict[str, Any]:
        """Store a new version if the current one is `if_match_version`; else VersionConflict."""
        now = self._clock()
        new_version = if_match_version + 1
        stored = with_version(resource, new_version, now)
        text = canonical_json(stored)
        result = conn.execute(
            update(tasks)
            .where(tasks.c.id == task_id, tasks.c.version_id == if_match_version)
            .values(
                version_id=tasks.c.version_id + 1,
                last_updated=now,
                resource=text,
                **self._columns(stored),
            )
        )
        if result.rowcount != 1:
            current = conn.execute(select(tasks.c.version_id).where(tasks.c.id == task_id)).first()
            if current is None:
                raise NotFound(f"Task/{task_id} is not known")
            raise VersionConflict(
                f"Task/{task_id} is at version {current.version_id}, not {if_match_version}"
            )
        conn.execute(
            insert(task_history).values(
                task_id=task_id, version_id=new_version, last_updated=now, resource=text
            )
        )
        return stored

    def search(
        self, conn: Connection, *, statuses: Sequence[str] = (), count: int = 50
    ) -> list[dict[str, Any]]:
        """Tasks with one of the statuses (all when empty), most recently changed first."""
        query = select(tasks.c.resource).order_by(tasks.c.last_updated.desc(), tasks.c.id)
        if statuses:
            query = query.where(tasks.c.status.in_(list(statuses)))
        query = query.limit(max(0, min(count, MAX_COUNT)))
        return [_load(row.resource) for row in conn.execute(query)]

    def history(self, conn: Connection, task_id: str) -> list[dict[str, Any]]:
        """Every version of a Task, newest first (FHIR history-instance); NotFound when none."""
        rows = conn.execute(
            select(task_history.c.resource)
            .where(task_history.c.task_id == task_id)
            .order_by(task_history.c.version_id.desc())
        ).all()
        if not rows:
            raise NotFound(f"Task/{task_id} is not known")
        return [_load(row.resource) for row in rows]

    def find_open_for_study(
        self, conn: Connection, study_uid: str, use_case: str
    ) -> dict[str, Any] | None:
        """The open (non-terminal) Task of a study and use case, if any."""
        row = conn.execute(
            select(tasks.c.resource)
            .where(
                tasks.c.study_instance_uid == study_uid,
                tasks.c.use_case == use_case,
                tasks.c.status.not_in([s.value for s in TERMINAL]),
            )
            .order_by(tasks.c.last_updated.desc())
            .limit(1)
        ).first()
        return None if row is None else _load(row.resource)


def _first_code(concept: Any) -> str | None:
    if isinstance(concept, Mapping):
        for coding in concept.get("coding", []):
            if isinstance(coding, Mapping) and coding.get("code"):
                return str(coding["code"])
    return None


def search_columns(resource: Mapping[str, Any]) -> dict[str, Any]:
    """The indexed copies of Task search parameters (business-status, code, part-of, ...)."""
    part_of = next(
        (
            str(p["reference"]).removeprefix("Task/")
            for p in resource.get("partOf", [])
            if str(p.get("reference", "")).startswith("Task/")
        ),
        None,
    )
    performer = next((_first_code(c) for c in resource.get("performerType", [])), None)
    encounter = str(resource.get("encounter", {}).get("reference", "")).removeprefix("Encounter/")
    modified = resource.get("lastModified")
    deadline = resource.get("restriction", {}).get("period", {}).get("end")
    return {
        "business_status": _first_code(resource.get("businessStatus")),
        "code": _first_code(resource.get("code")),
        "encounter_id": encounter or None,
        "part_of": part_of,
        "performer_type": performer,
        "last_modified": parse_instant(modified) if isinstance(modified, str) else None,
        "deadline": parse_instant(deadline) if isinstance(deadline, str) else None,
    }


def _load(text: str) -> dict[str, Any]:
    loaded = json.loads(text)
    if not isinstance(loaded, dict):
        raise ValueError("a stored Task is not a JSON object")
    return loaded
