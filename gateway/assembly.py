"""Study stable: claim studies whose quiet period has passed, exactly once across replicas.

The claim is one `UPDATE … WHERE study_instance_uid IN (SELECT … LIMIT n) AND <due> RETURNING …`.
On SQLite writers are serialised (`BEGIN IMMEDIATE`), so the statement is exact as written. On
PostgreSQL a concurrent claimer blocks on the row lock and then re-checks the outer `<due>`
condition against the committed row (READ COMMITTED re-evaluation), which no longer holds; that
repetition of the condition outside the subquery is what makes the claim exact without
`FOR UPDATE SKIP LOCKED` (which SQLite does not have).

A claimed study carries a lease; a replica that dies while scoring leaves a lease that expires and
another replica takes the study over.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta

from sqlalchemy import ColumnElement, Connection, Engine, and_, bindparam, or_, select, update

from gateway.audit.trail import record_event
from gateway.domain.errors import IllegalTransition
from gateway.domain.model import Actor, StudyContext, StudyState
from gateway.persistence.driver_statement import DriverStatement
from gateway.persistence.tables import instances, studies
from gateway.pipeline import Event, PipelineEvent

GATEWAY_ACTOR = Actor(reference="Device/hitl-gateway", display="hitl-gateway")
# States the scoring step may leave a claimed study in.
DONE_STATES: frozenset[StudyState] = frozenset(
    {StudyState.SCORED, StudyState.STANDARD_TRIAGE, StudyState.UNROUTED}
)


def _utc(moment: datetime) -> datetime:
    # SQLite keeps timestamps as text without an offset, so every bound value must be UTC.
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _due(now: datetime) -> ColumnElement[bool]:
    return or_(
        and_(studies.c.state == StudyState.RECEIVING.value, studies.c.stable_due_at <= now),
        and_(studies.c.state == StudyState.SCORING.value, studies.c.lease_until < now),
    )


# Whether any study is due, read without a write transaction: the poll runs every
# `assembly.poll_seconds` while instances are being committed, and most polls find nothing.
_ANY_DUE = DriverStatement(
    select(studies.c.study_instance_uid)
    .where(
        or_(
            and_(
                studies.c.state == StudyState.RECEIVING.value,
                studies.c.stable_due_at <= bindparam("now", type_=studies.c.stable_due_at.type),
            ),
            and_(
                studies.c.state == StudyState.SCORING.value,
                studies.c.lease_until < bindparam("now", type_=studies.c.lease_until.type),
            ),
        )
    )
    .limit(1)
)


class StudyAssembler:
    """Claims stable studies for scoring under a lease held by `worker_id`."""

    def __init__(
        self,
        engine: Engine,
        worker_id: str,
        lease_seconds: float,
        *,
        batch_size: int = 16,
        max_claim_attempts: int = 5,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        self._engine = engine
        self.worker_id = worker_id
        self.lease_seconds = lease_seconds
        self.batch_size = batch_size
        self.max_claim_attempts = max_claim_attempts
        self._clock = clock

    def claim_due(self, now: datetime) -> list[StudyContext]:
        """Claim up to `batch_size` studies that are stable or whose lease expired, oldest first."""
        now = _utc(now)
        with self._engine.connect() as conn:
            # On the driver's cursor: no SQLAlchemy transaction, so SQLite's write lock (taken
            # at every BEGIN) stays free for the instances being recorded.
            if not _ANY_DUE.rows(conn, {"now": now}):
                return []
        lease_until = now + timedelta(seconds=self.lease_seconds)
        self._set_aside_failing(now)
        # A study whose passes keep failing goes behind every fresh one, so it never blocks them.
        pick = (
            select(studies.c.study_instance_uid)
            .where(_due(now))
            .order_by(studies.c.claim_attempts, studies.c.stable_due_at)
            .limit(self.batch_size)
        )
        claim = (
            update(studies)
            .where(studies.c.study_instance_uid.in_(pick), _due(now))
            .values(
                state=StudyState.SCORING.value,
                lease_owner=self.worker_id,
                lease_until=lease_until,
                updated_at=now,
                claim_attempts=studies.c.claim_attempts + 1,
            )
            .returning(
                studies.c.study_instance_uid,
                studies.c.patient_id,
                studies.c.patient_name,
                studies.c.accession_number,
                studies.c.modality,
                studies.c.encounter_id,
            )
        )
        with self._engine.begin() as conn:
            claimed = conn.execute(claim).all()
            if not claimed:
                return []
            paths = _latest_paths(conn, [row.study_instance_uid for row in claimed])
            contexts = [
                StudyContext(
                    study_instance_uid=row.study_instance_uid,
                    patient_id=row.patient_id,
                    patient_name=row.patient_name,
                    accession_number=row.accession_number,
                    modality=row.modality,
                    encounter_id=row.encounter_id,
                    instance_paths=tuple(paths.get(row.study_instance_uid, ())),
                )
                for row in claimed
            ]
            for study in contexts:
                record_event(conn, self._stable_event(study, now, lease_until))
        return sorted(contexts, key=lambda c: c.study_instance_uid)

    def _set_aside_failing(self, now: datetime) -> None:
        """Studies whose scoring passes died `max_claim_attempts` times keep standard triage."""
        failing = and_(
            studies.c.state == StudyState.SCORING.value,
            studies.c.lease_until < now,
            studies.c.claim_attempts >= self.max_claim_attempts,
        )
        with self._engine.begin() as conn:
            rows = conn.execute(
                update(studies)
                .where(failing)
                .values(
                    state=StudyState.STANDARD_TRIAGE.value,
                    lease_owner=None,
                    lease_until=None,
                    updated_at=now,
                )
                .returning(
                    studies.c.study_instance_uid,
                    studies.c.patient_id,
                    studies.c.encounter_id,
                    studies.c.claim_attempts,
                )
            ).all()
            for row in rows:
                record_event(
                    conn,
                    PipelineEvent(
                        kind=Event.STANDARD_TRIAGE,
                        actor=GATEWAY_ACTOR,
                        occurred_at=now,
                        outcome="8",
                        outcome_desc=f"scoring failed {row.claim_attempts} times; set aside",
                        study_instance_uid=row.study_instance_uid,
                        patient_id=row.patient_id,
                        encounter_id=row.encounter_id,
                        detail={"claim-attempts": str(row.claim_attempts)},
                    ),
                )

    def mark_done(
        self,
        conn: Connection,
        study_uid: str,
        state: StudyState | str,
        lease_owner: str | None = None,
    ) -> bool:
        """End a claim in the caller's transaction; False if the lease was lost or a late
        instance re-opened the study (the caller then discards its result)."""
        target = StudyState(state)
        if target not in DONE_STATES:
            raise IllegalTransition(f"a claimed study cannot end in state {target.value!r}")
        result = conn.execute(
            update(studies)
            .where(
                studies.c.study_instance_uid == study_uid,
                studies.c.state == StudyState.SCORING.value,
                studies.c.lease_owner == (lease_owner or self.worker_id),
            )
            .values(
                state=target.value,
                lease_owner=None,
                lease_until=None,
                updated_at=_utc(self._clock()),
            )
        )
        return result.rowcount == 1

    def _stable_event(
        self, study: StudyContext, now: datetime, lease_until: datetime
    ) -> PipelineEvent:
        return PipelineEvent(
            kind=Event.STUDY_STABLE,
            actor=GATEWAY_ACTOR,
            occurred_at=now,
            study_instance_uid=study.study_instance_uid,
            patient_id=study.patient_id,
            encounter_id=study.encounter_id,
            detail={
                "instances": str(len(study.instance_paths)),
                "lease-owner": self.worker_id,
                "lease-until": lease_until.isoformat(),
            },
        )


def _latest_paths(conn: Connection, study_uids: Sequence[str]) -> dict[str, list[str]]:
    """The path of the latest version of each instance, per study, in order of first receipt."""
    rows = conn.execute(
        select(
            instances.c.study_instance_uid,
            instances.c.sop_instance_uid,
            instances.c.version,
            instances.c.path,
        )
        .where(instances.c.study_instance_uid.in_(study_uids))
        .order_by(instances.c.id)
    ).all()
    latest: dict[tuple[str, str], tuple[int, str]] = {}
    for row in rows:
        key = (row.study_instance_uid, row.sop_instance_uid)
        if key not in latest or row.version > latest[key][0]:
            # Insertion order of the dict keeps each instance where it first arrived.
            latest[key] = (row.version, row.path)
    paths: dict[str, list[str]] = {}
    for (study_uid, _sop), (_version, path) in latest.items():
        paths.setdefault(study_uid, []).append(path)
    return paths
