"""Composition root: the only place where concrete peers are wired to the core."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Any

from aiohttp import web
from sqlalchemy import Engine, text

from gateway.settings import Settings

if TYPE_CHECKING:
    from gateway.ingest import InstanceRecorder
    from gateway.spool import Spool

log = logging.getLogger(__name__)


def worker_identity() -> str:
    """A name for this replica's leases: host and process id."""
    return f"{socket.gethostname()}:{os.getpid()}"


class _ScoringReadiness:
    """The scorers' and the worker pool's readiness as one `describe()`."""

    def __init__(self, service: Any, step: Any) -> None:
        self._service = service
        self._step = step

    def describe(self) -> dict[str, Any]:
        """Served versions per use case and pool health; status "ok" or "degraded"."""
        facts: dict[str, Any] = self._service.describe(self._step.health())
        return facts


def _readiness(engine: Engine, scorer: Any, dispatcher_alive: Any) -> dict[str, Any]:
    checks: dict[str, Any] = {}
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:  # readiness reports any database failure; it never raises
        checks["database"] = f"unavailable: {type(exc).__name__}"
    model = scorer.describe()
    checks["model"] = model
    degraded = model.get("status") != "ok"
    ready = checks["database"] == "ok"
    checks["status"] = "degraded" if ready and degraded else ("ready" if ready else "not-ready")
    checks["worklist_dispatcher"] = "running" if dispatcher_alive() else "stopped"
    return checks


async def _reap_spool(engine: Engine, settings: Settings) -> None:
    from gateway.spool_reaper import reap_orphans
    from gateway.transfer_audit import audit_interrupted_transfers

    storage = settings.storage
    await asyncio.to_thread(audit_interrupted_transfers, engine)
    await asyncio.to_thread(reap_orphans, engine, storage.spool_dir, storage.orphan_grace_seconds)


def _recover_answered(recorder: InstanceRecorder, spool: Spool) -> None:
    from gateway.spool_recovery import recover_answered

    try:
        recover_answered(recorder, spool)
    except Exception:
        # Each file left is tried again at the next start; the orphan reaper leaves it alone.
        log.exception("could not recover the instances a stopped run answered")


def _settle(recorder: InstanceRecorder) -> None:
    try:
        recorder.settle()
    except Exception:
        log.warning("commits owed to answered instances were left to the next start", exc_info=True)


def _rehearse_ingest(recorder: InstanceRecorder, settings: Settings) -> None:
    from gateway.ingest_rehearsal import rehearse_ingest

    try:
        rehearse_ingest(recorder, settings.storage.spool_dir / ".incoming")
    except Exception:
        # Only the first instances' speed depends on it; a real fault shows on the first C-STORE.
        log.warning("the start-up rehearsal of the record path failed", exc_info=True)


async def serve(settings: Settings, *, stop: asyncio.Event | None = None) -> None:
    """Run the DIMSE and HTTP listeners and the pipeline workers until stopped."""
    from adapters.worklist.factory import (
        build_alert_updater,
        build_encounter_lookup,
        build_updaters,
    )
    from adapters.worklist.http_peer import read_secret
    from gateway.assembly import StudyAssembler
    from gateway.audit.checkpoint import checkpointer
    from gateway.audit.configuration import record_configuration
    from gateway.auth.tokens import TokenValidator
    from gateway.ingest import InstanceRecorder
    from gateway.listeners.dicomweb import register_dicomweb
    from gateway.listeners.dimse import DimseListener
    from gateway.listeners.http import build_http_app
    from gateway.listeners.metrics_route import add_metrics_route
    from gateway.listeners.rest_audit import attach_audit
    from gateway.metrics import Metrics
    from gateway.outbox import ALERT_DESTINATION, OutboxDispatcher, count_by_state
    from gateway.persistence.db import make_engine
    from gateway.persistence.migrate import current_revision
    from gateway.review_service import ReviewService
    from gateway.review_sla import run_sweeper
    from gateway.scoring_step import ScoringStep
    from gateway.spool import Spool
    from gateway.subscriptions import SubscriptionNotifier
    from scoring.service import ScoringService

    stop = stop or asyncio.Event()
    engine = make_engine(settings.database_url)
    if current_revision(engine) is None:
        raise SystemExit("the database is not migrated: run `hitl-gateway db upgrade` first")
    record_configuration(engine, settings)  # audited when it differs from the last run's
    worker = worker_identity()
    settings.storage.spool_dir.mkdir(parents=True, exist_ok=True)

    spool = Spool(settings.storage.spool_dir, settings.storage.spool_quota_bytes or None)
    recorder = InstanceRecorder(engine, spool, settings)
    scoring = ScoringService(settings, engine)
    assembler = StudyAssembler(
        engine,
        worker,
        lease_seconds=settings.scoring.timeout_seconds * 4,
        max_claim_attempts=settings.assembly.max_claim_attempts,
    )
    review = ReviewService(engine, settings)
    encounters = build_encounter_lookup(settings.worklist)
    step = ScoringStep(
        engine=engine,
        settings=settings,
        assembler=assembler,
        scorer=scoring.step_scorers["cxr-pneumothorax"],
        scorers=scoring.step_scorers,
        router=scoring.route,
        write_review_task=review.create_review_task,
        encounters=encounters,
    )
    metrics = Metrics()
    scoring.attach_metrics(metrics)
    metrics.gauge(
        "hitl_outbox_rows", "Outbox rows by destination and state.", lambda: count_by_state(engine)
    )
    updaters: dict[str, Any] = dict(build_updaters(settings.worklist))
    alert = build_alert_updater(settings.worklist)
    if alert is not None:
        updaters[ALERT_DESTINATION] = alert
    dispatcher = OutboxDispatcher(
        engine,
        updaters,
        settings.worklist,
        worker,
        metrics=metrics,
        alert_destination=ALERT_DESTINATION if alert is not None else "",
    )

    workers: list[asyncio.Task[None]] = []
    app = build_http_app(
        settings,
        engine,
        review,
        TokenValidator(settings),
        lambda: _readiness(
            engine, _ScoringReadiness(scoring, step), lambda: any(not w.done() for w in workers)
        ),
    )
    add_metrics_route(app, metrics, read_secret(settings.http.metrics_token_file))
    register_dicomweb(app, recorder)
    dimse = DimseListener(settings, recorder)
    attach_audit(app)  # BALP REST audit of every FHIR interaction; Bulk Data $export

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):  # not the main thread
            loop.add_signal_handler(sig, stop.set)

    async with AsyncExitStack() as stack:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        stack.push_async_callback(runner.cleanup)
        for updater in updaters.values():
            if hasattr(updater, "aclose"):
                stack.push_async_callback(updater.aclose)
        if encounters is not None:
            stack.push_async_callback(encounters.aclose)
        # Before either port opens: what a crashed run answered is recorded before anything
        # is received again, and a health check that answers means DICOM is accepted too.
        await asyncio.to_thread(_recover_answered, recorder, spool)
        await asyncio.to_thread(_rehearse_ingest, recorder, settings)
        site = web.TCPSite(runner, settings.http.host, settings.http.port)
        await site.start()
        dimse.start()
        # Runs after the listener stopped: the commits owed to answered instances are made
        # now rather than recovered at the next start.
        stack.callback(_settle, recorder)
        stack.callback(dimse.stop)
        workers.append(asyncio.create_task(_reap_spool(engine, settings), name="spool-reaper"))
        stack.callback(step.close)
        stack.callback(scoring.close)
        workers.append(asyncio.create_task(step.run_forever(stop), name="scoring"))
        workers.append(
            asyncio.create_task(
                scoring.watch(stop, settings.mlflow.poll_seconds), name="model-watch"
            )
        )
        workers.append(asyncio.create_task(dispatcher.run_forever(stop), name="outbox"))
        workers.append(
            asyncio.create_task(checkpointer(engine, settings, stop), name="audit-checkpoints")
        )
        workers.append(asyncio.create_task(run_sweeper(engine, settings, stop), name="review-sla"))
        workers.append(
            asyncio.create_task(
                SubscriptionNotifier(engine, settings).run_forever(stop), name="subscriptions"
            )
        )
        log.info(
            "hitl-gateway ready: DICOM %s@%s:%d, HTTP %s:%d, database %s",
            settings.dicom.ae_title,
            settings.dicom.host,
            settings.dicom.port,
            settings.http.host,
            settings.http.port,
            engine.url.render_as_string(hide_password=True),
        )
        print("READY", flush=True)  # readiness line for supervisors and tests
        await stop.wait()
        for w in workers:
            w.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
    engine.dispose()
