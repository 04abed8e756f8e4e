"""Dead letters by age, alert rows, metrics, the outbox CLI, one queued change per destination."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, insert

from adapters.worklist.memory import MemoryWorklistUpdater
from gateway.auth.tokens import TokenValidator, mint_token
from gateway.cli import main as cli_main
from gateway.domain.model import Actor
from gateway.domain.priority import Priority
from gateway.domain.worklist import PRIORITY_CHANGE_KIND, PriorityChange
from gateway.metrics import Metrics
from gateway.outbox import (
    ALERT_DESTINATION,
    DEAD,
    DEAD_LETTER_ALERT_KIND,
    PENDING,
    OutboxDispatcher,
    count_by_state,
    enqueue,
    list_rows,
)
from gateway.persistence.tables import studies
from gateway.review_service import ReviewService
from gateway.reviewer_credentials import grant
from gateway.settings import (
    HttpSettings,
    Settings,
    StorageSettings,
    WorklistDestination,
    WorklistSettings,
)
from tests.unit.fhir.samples import decision_body, gateway_engine, score, study

T0 = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)
REVIEWER = Actor(reference="Practitioner/r1", roles=("reviewer",))


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    """Both databases."""
    with gateway_engine(database_url) as eng:
        yield eng


def _queue(engine: Engine, key: str, destination: str = "hl7", at: datetime = T0) -> None:
    change = PriorityChange(key, "1.2.3", "ACC", "PAT", Priority.STAT, at)
    with engine.begin() as conn:
        enqueue(
            conn,
            destination=destination,
            idempotency_key=key,
            study_uid="1.2.3",
            kind=PRIORITY_CHANGE_KIND,
            payload=change.to_json(),
            actor=REVIEWER,
            patient_id="PAT",
            now=at,
        )


async def test_a_change_older_than_max_age_is_dead_lettered(engine: Engine) -> None:
    settings = WorklistSettings(max_age_seconds=3600, max_attempts=100)
    twin = MemoryWorklistUpdater()
    twin.fail_next(2)
    _queue(engine, "k1")
    clock = [T0 + timedelta(minutes=30)]
    dispatcher = OutboxDispatcher(
        engine, {"hl7": twin}, settings, "w1", clock=lambda: clock[0], rand=lambda: 0.0
    )
    await dispatcher.run_once(clock[0])
    assert list_rows(engine)[0].state == PENDING
    clock[0] = T0 + timedelta(hours=2)
    await dispatcher.run_once(clock[0])
    (row,) = list_rows(engine, DEAD)
    assert row.attempts == 2


async def test_dead_letter_alert_is_queued_once_and_never_alerts_about_itself(
    engine: Engine,
) -> None:
    twin, alerts = MemoryWorklistUpdater(), MemoryWorklistUpdater()
    twin.refuse_next(reason="AR: unknown order")
    alerts.refuse_next(reason="alert sink says no")
    metrics = Metrics()
    _queue(engine, "k1")
    dispatcher = OutboxDispatcher(
        engine,
        {"hl7": twin, ALERT_DESTINATION: alerts},
        WorklistSettings(),
        "w1",
        clock=lambda: T0,
        metrics=metrics,
        alert_destination=ALERT_DESTINATION,
    )
    await dispatcher.run_once(T0)
    await dispatcher.run_once(T0)
    rows = list_rows(engine)
    assert [(r.destination, r.kind, r.state) for r in rows] == [
        ("hl7", PRIORITY_CHANGE_KIND, DEAD),
        (ALERT_DESTINATION, DEAD_LETTER_ALERT_KIND, DEAD),
    ]
    alert = json.loads(alerts.attempts[0].payload)
    assert (alert["outbox_id"], alert["reason"]) == (rows[0].id, "refused by the peer")
    assert metrics.counter("hitl_worklist_dead_letters_total", "").value(destination="hl7") == 1
    by_state = {(lbl["destination"], lbl["state"]): n for lbl, n in count_by_state(engine)}
    assert by_state == {("hl7", DEAD): 1.0, (ALERT_DESTINATION, DEAD): 1.0}


def test_metrics_render_in_prometheus_text() -> None:
    metrics = Metrics()
    counter = metrics.counter("hitl_x_total", "Things.")
    counter.inc(destination='a"b')
    counter.inc(2.5, destination="c")
    metrics.gauge("hitl_rows", "Rows.", lambda: [({"state": "dead"}, 3.0)])
    assert metrics.render() == (
        "# HELP hitl_x_total Things.\n# TYPE hitl_x_total counter\n"
        'hitl_x_total{destination="a\\"b"} 1\nhitl_x_total{destination="c"} 2.5\n'
        '# HELP hitl_rows Rows.\n# TYPE hitl_rows gauge\nhitl_rows{state="dead"} 3\n'
    )
    with pytest.raises(ValueError, match="only go up"):
        counter.inc(-1)


def test_outbox_list_and_show_from_the_cli(
    engine: Engine, database_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _queue(engine, "k1")
    config = tmp_path / "gateway.toml"
    config.write_text(f'[database]\nurl = "{database_url}"\n[storage]\ndata_dir = "{tmp_path}"\n')
    assert cli_main(["--config", str(config), "outbox", "list", "--state", "pending"]) == 0
    listing = capsys.readouterr().out.splitlines()
    assert listing[0].startswith("id\tstate\tdestination")
    assert listing[1].split("\t")[:4] == ["1", "pending", "hl7", "0"]
    assert cli_main(["--config", str(config), "outbox", "show", "1"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["payload"]["accession_number"], shown["idempotency_key"]) == ("ACC", "k1")
    assert cli_main(["--config", str(config), "outbox", "show", "99"]) == 2
    assert cli_main(["--config", str(config), "outbox", "replay", "99"]) == 2


def test_an_approval_queues_one_neutral_change_per_destination(
    engine: Engine, tmp_path: Path
) -> None:
    settings = Settings(
        storage=StorageSettings(data_dir=tmp_path),
        http=HttpSettings(base_url="http://127.0.0.1:8080"),
        worklist=WorklistSettings(
            hl7_host="127.0.0.1",
            hl7_port=2575,
            destinations=(
                WorklistDestination(name="ups", kind="ups-rs", url="http://127.0.0.1:1/ups"),
                WorklistDestination(name="ehr", kind="fhir-service-request", url="http://x"),
            ),
        ),
    )
    now = datetime.now(UTC)
    review = ReviewService(engine, settings)
    with engine.begin() as conn:
        conn.execute(
            insert(studies).values(
                study_instance_uid=study().study_instance_uid,
                patient_id="pat-1",
                patient_name="Doe^Jane",
                accession_number="ACC-1",
                encounter_id="enc-1",
                modality="CR",
                state="scored",
                instance_count=1,
                first_received_at=now,
                last_received_at=now,
                stable_due_at=now,
                score_generation=1,
                updated_at=now,
            )
        )
        task = review.create_review_task(conn, study(), score())
        grant(
            conn,
            practitioner="Practitioner/dr-1",
            roles=["reviewer"],
            valid_until=now + timedelta(days=30),
            granted_by="Practitioner/admin",
            now=now,
        )
    token = mint_token(settings, role="reviewer", user="Practitioner/dr-1")
    principal = TokenValidator(settings).validate(token)

    review.complete(str(task["id"]), decision_body(task), 'W/"1"', principal)

    rows = list_rows(engine)
    assert [r.destination for r in rows] == ["hl7", "ups", "ehr"]
    assert {r.idempotency_key for r in rows} == {f"{task['id']}:2"}
    change = PriorityChange.from_json(rows[0].payload)
    assert all(r.payload == rows[0].payload for r in rows)
    assert (change.accession_number, change.patient_id, change.encounter_id) == (
        "ACC-1",
        "pat-1",
        "enc-1",
    )
    assert change.priority == Priority(task["priority"])
