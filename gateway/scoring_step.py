"""Study stable → scored (or standard triage) → review Task: the scoring step of the pipeline.

Inference runs in a bounded worker pool off the event loop with a per-study timeout; whatever
goes wrong with the model, the study keeps standard triage and the fallback is recorded. Ingest
never waits on this step: it only reads studies the assembler has claimed.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Protocol

from sqlalchemy import Connection, Engine, insert, select

from gateway.assembly import StudyAssembler
from gateway.audit.trail import record_event
from gateway.domain.errors import GatewayError, ModelUnavailable
from gateway.domain.model import Actor, ScoreResult, StudyContext, StudyState, Thresholds
from gateway.domain.triage import proposed_priority
from gateway.encounter_context import with_encounter
from gateway.persistence.tables import instances, scores
from gateway.pipeline import Event, PipelineEvent
from gateway.ports import EncounterLookup, ModelOutput, StudyScorer
from gateway.settings import Settings

log = logging.getLogger(__name__)

GATEWAY_ACTOR = Actor(reference="Device/hitl-gateway", display="hitl-gateway")

ReviewTaskWriter = Callable[[Connection, StudyContext, ScoreResult], object]


class RoutedStudy(Protocol):
    """What a router returns: the use case and the instances it scores."""

    @property
    def use_case(self) -> str:
        """The use case that scores the study."""

    @property
    def instance_paths(self) -> tuple[str, ...]:
        """The instances the use case scores."""


Router = Callable[[Sequence[str]], RoutedStudy | None]


class ScoringStep:
    """Scores every study the assembler claims and records the outcome in one transaction."""

    def __init__(
        self,
        *,
        engine: Engine,
        settings: Settings,
        assembler: StudyAssembler,
        scorer: StudyScorer,
        write_review_task: ReviewTaskWriter,
        use_case: str = "cxr-pneumothorax",
        scorers: Mapping[str, StudyScorer] | None = None,
        router: Router | None = None,
        encounters: EncounterLookup | None = None,
    ) -> None:
        self._engine = engine
        self._encounters = encounters
        self._settings = settings
        self._assembler = assembler
        self._scorer = scorer
        self._write_review_task = write_review_task
        self._use_case = use_case
        # One scorer per use case; the router picks the use case and instances of each study.
        self._scorers: Mapping[str, StudyScorer] = scorers or {use_case: scorer}
        self._router = router
        self._pool = self._new_pool()
        # Workers abandoned after a timeout; while this many still run, no study is submitted.
        self._hung: list[Future[ModelOutput]] = []
        self.fallbacks = 0
        self.scored = 0
        self.unrouted = 0
        self.timeouts = 0

    def _new_pool(self) -> ThreadPoolExecutor:
        return ThreadPoolExecutor(
            max_workers=max(1, self._settings.scoring.workers), thread_name_prefix="inference"
        )

    def hung_workers(self) -> int:
        """Inference threads abandoned after a timeout that have not finished yet."""
        self._hung = [f for f in self._hung if not f.done()]
        return len(self._hung)

    def health(self) -> dict[str, object]:
        """Readiness facts of the worker pool: degraded while abandoned workers still run."""
        hung = self.hung_workers()
        return {
            "status": "degraded" if hung else "ok",
            "hung_workers": hung,
            "timeouts": self.timeouts,
            "fallbacks": self.fallbacks,
            "unrouted": self.unrouted,
        }

    def close(self) -> None:
        """Stop the worker pool."""
        self._pool.shutdown(wait=False, cancel_futures=True)

    @property
    def thresholds(self) -> Thresholds:
        """Thresholds in force now."""
        review = self._settings.review
        return Thresholds(review=review.threshold, secondary_review=review.secondary_threshold)

    async def run_once(self, now: datetime | None = None) -> int:
        """Claim the studies that became stable and score each; returns how many were handled."""
        claimed = await asyncio.to_thread(self._assembler.claim_due, now or datetime.now(UTC))
        for study in claimed:
            try:
                await self._score(study)
            except Exception:
                # One study in error never blocks the next: its lease expires, it is retried
                # behind fresh studies and set aside after `max_claim_attempts`.
                log.exception("scoring study %s failed", study.study_instance_uid)
        return len(claimed)

    async def run_forever(self, stop: asyncio.Event) -> None:
        """Poll for stable studies until `stop` is set."""
        while not stop.is_set():
            try:
                await self.run_once()
            except Exception:
                # The loop must outlive a database hiccup; the claimed study's lease expires and
                # another pass (or replica) takes it over, so nothing is lost.
                log.exception("scoring pass failed; retrying after the poll interval")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self._settings.assembly.poll_seconds)

    async def _score(self, study: StudyContext) -> None:
        study = await with_encounter(study, self._encounters)
        output: ModelOutput | None = None
        reason = ""
        use_case, paths = self._use_case, study.instance_paths
        future: Future[ModelOutput] | None = None
        try:
            if self._router is not None:
                route = await asyncio.to_thread(self._router, study.instance_paths)
                if route is None:
                    await asyncio.to_thread(self._record_unrouted, study)
                    return
                use_case, paths = route.use_case, route.instance_paths
            scorer = self._scorers.get(use_case)
            if scorer is None:
                raise ModelUnavailable(f"no scorer is configured for use case {use_case!r}")
            if self.hung_workers() >= max(1, self._settings.scoring.workers):
                raise ModelUnavailable(
                    f"{len(self._hung)} inference worker(s) still hung after a timeout"
                )
            future = self._pool.submit(scorer.score, paths)
            output = await asyncio.wait_for(
                asyncio.wrap_future(future), timeout=self._settings.scoring.timeout_seconds
            )
        except TimeoutError:
            reason = f"model timed out after {self._settings.scoring.timeout_seconds:g} s"
            self.timeouts += 1
            if future is not None and not future.cancel():
                # The thread cannot be stopped: abandon it to a retired pool and score the next
                # study on fresh workers; it counts as hung (and /readyz degraded) until it ends.
                self._hung.append(future)
                self._pool.shutdown(wait=False, cancel_futures=True)
                self._pool = self._new_pool()
        except GatewayError as exc:
            reason = exc.message
        except Exception as exc:
            # The scorer promises only ModelUnavailable; anything else is still a model failure
            # for the patient's study, which must keep standard triage.
            log.exception("scorer raised an unexpected error")
            reason = f"model error: {type(exc).__name__}"
        if future is not None and future in self._hung:
            await asyncio.to_thread(self._record_hung, study, use_case, reason)
        await asyncio.to_thread(self._record, study, output, reason, use_case)

    def _record_hung(self, study: StudyContext, use_case: str, reason: str) -> None:
        """Audit an abandoned inference worker (the study itself is recorded separately)."""
        with self._engine.begin() as conn:
            record_event(
                conn,
                PipelineEvent(
                    kind=Event.SCORING_WORKER_HUNG,
                    actor=GATEWAY_ACTOR,
                    occurred_at=datetime.now(UTC),
                    outcome="8",
                    outcome_desc=f"{reason}; worker abandoned, {len(self._hung)} still running",
                    study_instance_uid=study.study_instance_uid,
                    patient_id=study.patient_id,
                    encounter_id=study.encounter_id,
                    detail={"use-case": use_case},
                ),
            )

    def _record_unrouted(self, study: StudyContext) -> None:
        """No use case applies: the study is recorded and audited, not scored."""
        now = datetime.now(UTC)
        with self._engine.begin() as conn:
            if not self._assembler.mark_done(conn, study.study_instance_uid, StudyState.UNROUTED):
                return
            record_event(
                conn,
                PipelineEvent(
                    kind=Event.STUDY_UNROUTED,
                    actor=GATEWAY_ACTOR,
                    occurred_at=now,
                    outcome_desc="no routing rule matches the study's DICOM attributes",
                    study_instance_uid=study.study_instance_uid,
                    patient_id=study.patient_id,
                    encounter_id=study.encounter_id,
                    detail={"modality": study.modality},
                ),
            )
        self.unrouted += 1

    def _record(
        self, study: StudyContext, output: ModelOutput | None, reason: str, use_case: str = ""
    ) -> None:
        use_case = use_case or self._use_case
        now = datetime.now(UTC)
        with self._engine.begin() as conn:
            input_hash = output.input_hash if output else _study_input_hash(conn, study)
            result = ScoreResult(
                study_instance_uid=study.study_instance_uid,
                thresholds=self.thresholds,
                input_hash=input_hash,
                score=output.score if output else None,
                model=output.model if output else None,
                fallback_reason=reason,
                label=output.label if output else "",
            )
            if not self._assembler.mark_done(
                conn,
                study.study_instance_uid,
                StudyState.STANDARD_TRIAGE if result.is_fallback else StudyState.SCORED,
            ):
                # A late instance re-opened the study (or the lease was lost): the newer pass
                # scores it with every instance, so this result is not recorded.
                return
            conn.execute(
                insert(scores).values(
                    study_instance_uid=study.study_instance_uid,
                    use_case=use_case,
                    outcome="standard-triage" if result.is_fallback else "scored",
                    score=result.score,
                    label=result.label,
                    model_name=result.model.name if result.model else None,
                    model_version=result.model.version if result.model else None,
                    model_sha256=result.model.sha256 if result.model else None,
                    thresholds=json.dumps(result.thresholds.as_dict(), sort_keys=True),
                    input_hash=result.input_hash,
                    fallback_reason=result.fallback_reason,
                    created_at=now,
                )
            )
            record_event(
                conn,
                PipelineEvent(
                    kind=Event.STANDARD_TRIAGE if result.is_fallback else Event.STUDY_SCORED,
                    actor=GATEWAY_ACTOR,
                    occurred_at=now,
                    outcome="4" if result.is_fallback else "0",
                    outcome_desc=result.fallback_reason,
                    study_instance_uid=study.study_instance_uid,
                    patient_id=study.patient_id,
                    encounter_id=study.encounter_id,
                    model=result.model,
                    input_hash=result.input_hash,
                    thresholds=result.thresholds,
                    detail={
                        "score": "" if result.score is None else f"{result.score:.6f}",
                        "use-case": use_case if result.model is None else "",
                        "proposed-priority": proposed_priority(result).value,
                    },
                ),
            )
            if result.needs_review:
                self._write_review_task(conn, study, result)
        if result.is_fallback:
            self.fallbacks += 1
            log.warning("study %s keeps standard triage: %s", study.study_instance_uid, reason)
        else:
            self.scored += 1


def _study_input_hash(conn: Connection, study: StudyContext) -> str:
    """Without a model tensor, the input is identified by the hashes of the instances received."""
    rows = conn.execute(
        select(instances.c.sha256)
        .where(instances.c.study_instance_uid == study.study_instance_uid)
        .order_by(instances.c.sha256)
    ).scalars()
    return hashlib.sha256("".join(rows).encode("ascii")).hexdigest()
