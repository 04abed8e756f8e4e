"""Review deadlines (SLA): an open Task past `restriction.period.end` goes to the backup pool.

The sweep re-versions each overdue Task (owner cleared, status `requested`, performerType the
backup pool, businessStatus `reassigned-overdue`), with Provenance listed in `relevantHistory` and
an AuditEvent counting it as abandoned; the new deadline runs from the reassignment. Each Task is
updated optimistically, so two replicas sweeping at once reassign it once.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine, func, select

from fhir_mapping import task as task_map
from fhir_mapping.provenance import workflow_provenance
from fhir_mapping.review_tasks import reassigned_to_pool, with_deadline
from gateway.audit.trail import append_provenance, record_event
from gateway.domain.errors import VersionConflict
from gateway.domain.model import Actor
from gateway.persistence.tables import task_history, tasks
from gateway.pipeline import Event, PipelineEvent
from gateway.settings import Settings
from gateway.tasks import TaskRepository

log = logging.getLogger(__name__)
GATEWAY = Actor(reference="Device/hitl-gateway", display="hitl-gateway")
OPEN = ("requested", "accepted", "in-progress")


def _utcnow() -> datetime:
    return datetime.now(UTC)


def reassign_overdue(
    engine: Engine,
    settings: Settings,
    now: datetime | None = None,
    repository: TaskRepository | None = None,
    limit: int = 100,
) -> list[str]:
    """Reassign open Tasks past their deadline to the backup pool; returns their ids."""
    when = now or _utcnow()
    repo = repository or TaskRepository(lambda: when)
    pool = settings.review.backup_pool
    with engine.connect() as conn:
        ids = conn.execute(
            select(tasks.c.id)
            .where(tasks.c.status.in_(OPEN), tasks.c.deadline < when,
                   tasks.c.performer_type.is_distinct_from(pool))
            .order_by(tasks.c.deadline).limit(limit)
        ).scalars().all()  # fmt: skip
    moved: list[str] = []
    for task_id in ids:
        try:
            with engine.begin() as conn:
                current = repo.read(conn, task_id)
                version = int(current["meta"]["versionId"])
                provenance_id = str(uuid.uuid4())
                updated = reassigned_to_pool(current, pool, when)
                updated = with_deadline(updated, settings.review.sla_minutes, when)
                updated = task_map.add_relevant_history(updated, f"Provenance/{provenance_id}")
                repo.update(conn, task_id, updated, version)
                _record(conn, current, version, provenance_id, pool, when)
            moved.append(task_id)
        except VersionConflict:
            log.info("Task/%s changed while being reassigned; left to its new owner", task_id)
    return moved


def _record(
    conn: Connection,
    current: dict[str, Any],
    version: int,
    provenance_id: str,
    pool: str,
    when: datetime,
) -> None:
    facts = task_map.task_facts(current)
    versioned = f"Task/{facts.task_id}/_history/{version + 1}"
    append_provenance(
        conn,
        workflow_provenance(
            provenance_id=provenance_id, task_ref_versioned=versioned, actor_ref=GATEWAY.reference,
            activity="UPDATE", when=when,
            prior_task_version_ref=f"Task/{facts.task_id}/_history/{version}",
        ),
        facts.patient_id,
    )  # fmt: skip
    record_event(
        conn,
        PipelineEvent(
            kind=Event.REVIEW_OVERDUE,
            actor=GATEWAY,
            occurred_at=when,
            study_instance_uid=facts.study_instance_uid,
            patient_id=facts.patient_id,
            encounter_id=facts.encounter_id,
            entities=(versioned, f"Provenance/{provenance_id}"),
            outcome_desc="review deadline passed; reassigned to the backup pool",
            detail={"abandoned": "true", "previous-owner": facts.owner, "pool": pool,
                    "previous-status": facts.status},
        ),
    )  # fmt: skip


def abandoned_count(engine: Engine) -> int:
    """How many review Tasks were ever reassigned after their deadline (counted as abandoned)."""
    # From the version history, so a reassigned Task that was completed later still counts.
    with engine.connect() as conn:
        return int(
            conn.execute(
                select(func.count(func.distinct(task_history.c.task_id))).where(
                    task_history.c.resource.contains('"code":"reassigned-overdue"')
                )
            ).scalar_one()
        )


async def run_sweeper(
    engine: Engine,
    settings: Settings,
    stop: asyncio.Event,
    clock: Callable[[], datetime] = _utcnow,
) -> None:
    """Sweep for overdue Tasks every `review.sweep_seconds` until stopped."""
    while not stop.is_set():
        moved = await asyncio.to_thread(reassign_overdue, engine, settings, clock())
        if moved:
            log.warning("reassigned %d overdue review Task(s) to the backup pool", len(moved))
        try:
            await asyncio.wait_for(stop.wait(), timeout=settings.review.sweep_seconds)
        except TimeoutError:
            continue
