"""Every pipeline event is audited: one full run drives each producer through its real code and
the trail must then hold an AuditEvent for every kind in `gateway.pipeline.Event`.

A new event kind without an audit record (or without a step here that produces it) fails
`test_every_pipeline_event_is_audited_in_a_full_run`. The steps call the producing modules the
way the running gateway does (ingest, assembly, scoring, review, outbox, SLA sweeper, automation,
governance, the HTTP listener); only the model and the worklist peer are in-process twins.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy import Connection, Engine, select

import scoring  # noqa: F401  (telemetry off before MLflow loads)
from fhir_mapping.audit_event import DETAIL_EVENT, details_of
from gateway.assembly import StudyAssembler
from gateway.audit.checkpoint import create_checkpoint
from gateway.audit.retention import place_hold, release_hold
from gateway.audit.signing import AuditKeyring
from gateway.audit.trail import search
from gateway.audit.verify import verify_chain
from gateway.auth.issuer import mint_token
from gateway.auth.tokens import Principal, TokenValidator
from gateway.automation import SafetyDecision, record_decision
from gateway.domain.errors import DeliveryFailed, GatewayError
from gateway.domain.model import Actor, ModelIdentity, StudyContext, StudyState
from gateway.escalation import escalate_study
from gateway.ingest import InstanceRecorder, parse_header
from gateway.listeners.http import build_http_app
from gateway.outbox import OutboxDispatcher
from gateway.persistence.db import make_engine
from gateway.persistence.migrate import upgrade
from gateway.persistence.tables import instances
from gateway.pipeline import Event
from gateway.ports import ModelOutput
from gateway.review_service import ReviewService
from gateway.review_sla import reassign_overdue
from gateway.reviewer_credentials import grant
from gateway.scoring_step import ScoringStep
from gateway.settings import (
    HttpSettings,
    ScoringSettings,
    Settings,
    StorageSettings,
    WorklistSettings,
)
from gateway.spool import Spool
from gateway.transfer_audit import TransferTally, audit_transfer
from scoring.phantoms import write_cxr_file
from tests.integration.fhir_api.validator import validate_resources
from tests.unit.fhir.samples import decision_body

pytestmark = pytest.mark.integration

MODEL = ModelIdentity(name="cxr-pneumothorax", version="1", sha256="ab" * 32)
REVIEWER = Actor("Practitioner/dr-1", roles=("reviewer",), token_id="jti-1")
SCORES = {"1": 0.97, "2": 0.88, "3": 0.1, "4": 0.5, "5": 0.5, "6": 0.5}  # by study seed
# 1 is rejected (secondary review), 2 approved, 3 escalated; 4 fails, 5 hangs, 6 is unrouted.


@dataclass
class Run:
    engine: Engine
    settings: Settings
    review: ReviewService
    tmp: Path
    studies: dict[str, StudyContext]


class _Model:
    """The model twin: a fixed score per study, or a failure, or a hang."""

    def __init__(self, by_path: dict[str, float]) -> None:
        self.mode = "score"
        self.release = threading.Event()
        self.by_path = by_path

    def score(self, paths: Sequence[str]) -> ModelOutput:
        if self.mode == "hang":
            self.release.wait(10)
        if self.mode != "score":
            raise RuntimeError(f"model {self.mode}")
        return ModelOutput(self.by_path[paths[0]], MODEL, "cd" * 32, "pneumothorax")

    def describe(self) -> dict[str, str]:
        return {"status": "ok"}


class _Assembler:
    """Hands the scoring step the studies the real assembler claimed."""

    def __init__(self, real: StudyAssembler) -> None:
        self.real = real
        self.due: list[StudyContext] = []

    def claim_due(self, _now: datetime) -> list[StudyContext]:
        claimed, self.due = self.due, []
        return claimed

    def mark_done(self, conn: Connection, uid: str, state: StudyState | str) -> bool:
        return self.real.mark_done(conn, uid, state)


class _Ris:
    def __init__(self, fail: bool) -> None:
        self.fail = fail

    async def deliver(self, _message: Any) -> str:
        if self.fail:
            raise DeliveryFailed("RIS unreachable")
        return "ack-1"


@pytest.fixture
def run(database_url: str, tmp_path: Path) -> Iterator[Run]:
    engine = make_engine(database_url)
    upgrade(engine)
    settings = Settings(
        storage=StorageSettings(data_dir=tmp_path / "var"),
        http=HttpSettings(base_url="http://127.0.0.1:8080"),
        worklist=WorklistSettings(hl7_host="127.0.0.1", hl7_port=2575, max_attempts=1),
        scoring=ScoringSettings(timeout_seconds=0.5, workers=1),
    )
    try:
        yield Run(engine, settings, ReviewService(engine, settings), tmp_path, {})
    finally:
        engine.dispose()


def _ingest(run: Run) -> None:
    recorder = InstanceRecorder(run.engine, Spool(run.tmp / "spool"), run.settings)
    tally = TransferTally("MODALITY1", "127.0.0.1")
    for seed in SCORES:
        path = run.tmp / f"study{seed}" / f"cxr-{seed}.dcm"
        path.parent.mkdir()
        write_cxr_file(
            path, True, seed=int(seed), patient_id=f"P{seed}", patient_name="Doe^Jane",
            accession=f"ACC{seed}", encounter_id=f"ENC{seed}",
        )  # fmt: skip
        tally.stored(recorder.record(path, parse_header(path), "MODALITY1"))
    audit_transfer(run.engine, tally)
    recorder.record_refusal("UNKNOWN_AE", "calling AE not allowed", peer_address="127.0.0.1")


async def _score(run: Run) -> None:
    assembler = StudyAssembler(run.engine, "worker-1", lease_seconds=60)
    claimed = assembler.claim_due(datetime.now(UTC) + timedelta(hours=1))
    run.studies = {s.accession_number.removeprefix("ACC"): s for s in claimed}
    with run.engine.connect() as conn:
        rows = conn.execute(select(instances.c.path, instances.c.study_instance_uid)).all()
    by_uid = {s.study_instance_uid: SCORES[k] for k, s in run.studies.items()}
    model = _Model({str(r.path): by_uid[r.study_instance_uid] for r in rows})
    twin = _Assembler(assembler)
    step = ScoringStep(
        engine=run.engine, settings=run.settings, assembler=twin,  # type: ignore[arg-type]
        scorer=model, write_review_task=run.review.create_review_task,
    )  # fmt: skip
    try:
        twin.due = [run.studies[s] for s in "123"]
        await step.run_once()
        model.mode, twin.due = "failing", [run.studies["4"]]
        await step.run_once()
        model.mode, twin.due = "hang", [run.studies["5"]]
        await step.run_once()
        model.release.set()
    finally:
        model.release.set()
        step.close()
    unrouted = ScoringStep(
        engine=run.engine, settings=run.settings, assembler=twin,  # type: ignore[arg-type]
        scorer=model, write_review_task=run.review.create_review_task, router=lambda _p: None,
    )  # fmt: skip
    try:
        twin.due = [run.studies["6"]]
        await unrouted.run_once()
    finally:
        unrouted.close()


def _open_task(run: Run, seed: str) -> dict[str, Any]:
    with run.engine.connect() as conn:
        study = run.studies[seed]
        found = run.review.repository.find_open_for_study(
            conn, study.study_instance_uid, MODEL.use_case
        )
    assert found is not None, f"no review Task for study {seed}"
    return found


def _review(run: Run) -> None:
    now = datetime.now(UTC)
    with run.engine.begin() as conn:
        grant(
            conn, practitioner=REVIEWER.reference, roles=["reviewer"],
            valid_until=now + timedelta(days=30), granted_by="Practitioner/admin", now=now,
        )  # fmt: skip
    principal = Principal(actor=REVIEWER, scopes=())
    flagged = _open_task(run, "1")
    with pytest.raises(GatewayError):  # a stale version: refused and audited
        run.review.complete(flagged["id"], decision_body(flagged), 'W/"99"', principal, "r0")
    claimed = run.review.complete(
        flagged["id"], dict(flagged, status="accepted"), 'W/"1"', principal, "r1"
    )
    body = decision_body(claimed, "reject", "no-finding")
    version = claimed["meta"]["versionId"]
    run.review.complete(flagged["id"], body, f'W/"{version}"', principal, "r2")
    approve = _open_task(run, "2")
    run.review.complete(approve["id"], decision_body(approve), 'W/"1"', principal, "r3")
    escalate_study(
        run.review,
        run.studies["3"].study_instance_uid,
        {
            "resourceType": "Parameters",
            "parameter": [
                {"name": "priority", "valueCode": "urgent"},
                {"name": "rationale", "valueString": "clinical-context"},
            ],
        },
        principal,
        "r4",
    )


async def _deliver(run: Run) -> None:
    ok = OutboxDispatcher(run.engine, {"hl7": _Ris(fail=False)}, run.settings.worklist, "w1")
    await ok.run_once()
    from gateway.outbox import enqueue

    with run.engine.begin() as conn:
        study = run.studies["2"]
        enqueue(
            conn, destination="hl7", idempotency_key="again", study_uid=study.study_instance_uid,
            kind="hl7-omi-o23", payload="MSH|^~\\&|", actor=REVIEWER, patient_id=study.patient_id,
            now=datetime.now(UTC),
        )  # fmt: skip
    failing = OutboxDispatcher(run.engine, {"hl7": _Ris(fail=True)}, run.settings.worklist, "w2")
    await failing.run_once()


def _sla_and_committee(run: Run) -> None:
    reassign_overdue(run.engine, run.settings, now=datetime.now(UTC) + timedelta(days=7))
    now = datetime.now(UTC)
    with run.engine.begin() as conn:
        record_decision(
            conn,
            SafetyDecision(
                "auto-escalate", "cxr-pneumothorax", "Practitioner/chair", now,
                now + timedelta(days=30), "minutes 2026-11",
            ),
            recorded_by="Practitioner/admin",
            now=now,
        )  # fmt: skip


async def _http_refusals(run: Run) -> None:
    app = build_http_app(
        run.settings, run.engine, run.review, TokenValidator(run.settings), lambda: {}
    )
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        assert (await client.get("/fhir/Task")).status == 401
        token = mint_token(run.settings, role="reviewer", user="Practitioner/dr-1")
        forbidden = await client.get(
            "/fhir/AuditEvent", headers={"Authorization": f"Bearer {token}"}
        )
        assert forbidden.status == 403


def _governance(run: Run) -> None:
    from scoring.demo_model import build_demo_model, write_demo_model
    from scoring.governance import ModelGovernance
    from scoring.registry import ModelRegistry
    from scoring.service import ScoringService

    registry = ModelRegistry(f"sqlite:///{run.tmp}/mlflow/mlflow.db")
    gov = ModelGovernance(registry, run.engine)
    model = build_demo_model()
    onnx = write_demo_model(model, run.tmp / "demo").onnx_path
    admin = Actor("Practitioner/owner", roles=("admin",), token_id="t0")
    docs = {"subgroup_report.md": "# subgroups\n", "evaluation_data.md": "# data\n"}
    from scoring.demo_model import DEMO_CONTRACT

    def register(metrics: dict[str, float]) -> str:
        return gov.register(
            "cxr-pneumothorax", onnx, DEMO_CONTRACT, metrics, model.model_card, admin,
            artifacts=docs,
        ).version  # fmt: skip

    first = register(model.metrics)
    for n in (1, 2):
        gov.approve("cxr-pneumothorax", first, Actor(f"Practitioner/ap-{n}", ("model-approver",)))
    gov.promote("cxr-pneumothorax", first, admin)
    weak = register({**model.metrics, "auroc": 0.5})
    with pytest.raises(GatewayError):
        gov.promote("cxr-pneumothorax", weak, admin)
    second = register(model.metrics)
    for n in (1, 2):
        gov.approve("cxr-pneumothorax", second, Actor(f"Practitioner/ap-{n}", ("model-approver",)))
    gov.promote("cxr-pneumothorax", second, admin)
    gov.rollback("cxr-pneumothorax", admin)
    service = ScoringService(run.settings, run.engine)
    service.record_alias_change("cxr-pneumothorax", None, MODEL, "first load")


def _subscriptions(run: Run) -> None:
    from fhir_mapping import subscriptions as sub
    from gateway import subscriptions

    channel = {
        "type": "rest-hook", "endpoint": "http://127.0.0.1:9/hook", "payload": sub.PAYLOAD_TYPE,
        "_payload": {"extension": [{"url": sub.PAYLOAD_CONTENT, "valueCode": "id-only"}]},
    }  # fmt: skip
    body = {
        "resourceType": "Subscription", "meta": {"profile": [sub.SUBSCRIPTION_PROFILE]},
        "status": "requested", "reason": "worklist", "criteria": sub.TOPIC, "channel": channel,
    }  # fmt: skip
    with run.engine.begin() as conn:
        subscriptions.create(conn, body, REVIEWER.reference, datetime.now(UTC))
    # The subscriber's endpoint is a twin that answers 200: the handshake is attempted, audited.
    notifier = subscriptions.SubscriptionNotifier(
        run.engine, run.settings, post=lambda _url, _body, _headers, _timeout: 200
    )
    notifier.collect()
    notifier.deliver()


def _kinds(engine: Engine) -> set[str]:
    with engine.connect() as conn:
        events = search(conn, "AuditEvent", limit=100_000)
    return {details_of(e).get(DETAIL_EVENT, "") for e in events} - {""}


async def test_every_pipeline_event_is_audited_in_a_full_run(run: Run) -> None:
    _ingest(run)
    await _score(run)
    _review(run)
    await _deliver(run)
    _sla_and_committee(run)
    await _http_refusals(run)
    await asyncio.to_thread(_governance, run)
    _subscriptions(run)
    _trail_upkeep(run)
    missing = sorted(e.value for e in Event if e.value not in _kinds(run.engine))
    assert missing == [], f"pipeline events without an audit record: {missing}"
    assert verify_chain(run.engine, public_keys=_keyring(run).public_jwks()).ok
    with run.engine.connect() as conn:
        records = search(conn, "AuditEvent", limit=100_000) + search(conn, "Provenance", limit=1000)
    invalid = [r for r in validate_resources(records) if r["errors"] or r["bindingErrors"]]
    assert invalid == [], invalid  # the independent R4 validator accepts every record


def _keyring(run: Run) -> AuditKeyring:
    return AuditKeyring(run.tmp / "keys" / "audit")


def _trail_upkeep(run: Run) -> None:
    with run.engine.begin() as conn:
        create_checkpoint(conn, _keyring(run), "manual")
    hold = place_hold(run.engine, actor=REVIEWER, reason="inquiry 7", patient_id="P1")
    release_hold(run.engine, hold.id, actor=REVIEWER)
