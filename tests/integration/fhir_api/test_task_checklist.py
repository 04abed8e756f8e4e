"""standards.md §8 "Task" checklist lines and the review rules of the issue, over HTTP."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from fhir_mapping import codesystems as cs
from fhir_mapping.audit_event import details_of
from fhir_mapping.task import parse_instant
from gateway.automation import SafetyDecision, record_decision, switch_enabled
from gateway.review_sla import abandoned_count, reassign_overdue
from gateway.reviewer_credentials import grant
from tests.integration.fhir_api.conftest import FHIR_JSON, FhirGateway
from tests.unit.fhir.samples import STUDY_UID, decision_body

pytestmark = pytest.mark.integration


def _outputs(task: dict[str, Any]) -> dict[str, Any]:
    found = {}
    for entry in task.get("output", []):
        code = entry["type"]["coding"][0]["code"]
        found[code] = next(v for k, v in entry.items() if k.startswith("value"))
    return found


async def test_review_task_has_for_focus_requester_and_open_performer_type(
    fhir: FhirGateway,
) -> None:
    task, _ = await fhir.read_task()
    assert task["for"]["reference"] == "Patient/pat-1"
    assert task["focus"]["reference"] == f"ImagingStudy/{STUDY_UID}"
    assert task["requester"] == {"reference": "Device/hitl-gateway"}
    assert task["performerType"][0]["coding"][0]["code"] == "reviewer"
    assert "owner" not in task
    assert task["intent"] == "order"


async def test_open_task_claim_sets_owner_and_status_in_one_versioned_update(
    fhir: FhirGateway,
) -> None:
    task, etag = await fhir.read_task()
    response = await fhir.put_task(dict(task, status="accepted"), etag)
    assert response.status == 200
    claimed = await response.json(content_type=FHIR_JSON)
    assert claimed["owner"] == {"reference": "Practitioner/dr-1"}
    assert claimed["meta"]["versionId"] == "2"
    claims = fhir.events("review-status-changed")
    assert len(claims) == 1
    assert fhir.events("decision-recorded") == []


@pytest.mark.parametrize(
    ("start", "target"),
    [
        ("requested", "on-hold"),
        ("requested", "failed"),
        ("requested", "draft"),
        ("accepted", "on-hold"),
    ],
)
async def test_only_transitions_in_the_state_table_are_accepted(
    fhir: FhirGateway, start: str, target: str
) -> None:
    task, etag = await fhir.read_task()
    if start != "requested":
        done = await fhir.put_task(dict(task, status=start), etag)
        task, etag = await done.json(content_type=FHIR_JSON), done.headers["ETag"]
    response = await fhir.put_task(dict(task, status=target), etag)
    assert response.status in {409, 422}
    outcome = await response.json(content_type=FHIR_JSON)
    assert outcome["resourceType"] == "OperationOutcome"
    assert (await fhir.read_task())[1] == etag


@pytest.mark.parametrize("target", ["requested", "in-progress", "accepted", "completed"])
async def test_terminal_states_cannot_be_left(fhir: FhirGateway, target: str) -> None:
    task, etag = await fhir.read_task()
    done = await fhir.put_task(decision_body(task), etag)
    completed, etag = await done.json(content_type=FHIR_JSON), done.headers["ETag"]
    body = decision_body(completed) if target == "completed" else dict(completed, status=target)
    response = await fhir.put_task(body, etag)
    assert response.status == 409
    assert (await fhir.read_task())[1] == etag


@pytest.mark.parametrize(
    ("decision", "rationale", "override", "business"),
    [
        ("approve", "finding-confirmed", None, "approved"),
        ("override", "priority-too-low", "stat", "overridden"),
        ("reject", "artifact", None, "rejected"),
    ],
)
async def test_decision_completes_with_output_decision_and_rationale(
    fhir: FhirGateway, decision: str, rationale: str, override: str | None, business: str
) -> None:
    task, etag = await fhir.read_task()
    body = decision_body(task, decision, rationale, override=override)
    response = await fhir.put_task(body, etag)
    assert response.status == 200, await response.text()
    done = await response.json(content_type=FHIR_JSON)
    assert done["status"] == "completed"  # never "rejected" for a rejected AI finding
    outputs = _outputs(done)
    assert outputs["decision"]["coding"][0] == {
        "system": cs.DECISION_SYSTEM, "code": decision,
        "display": cs.DECISIONS[next(d for d in cs.DECISIONS if d.value == decision)].display,
    }  # fmt: skip
    assert outputs["rationale"]["coding"][0]["code"] == rationale
    assert done["businessStatus"]["coding"][0]["code"] == business
    if override:
        assert outputs["override-priority"] == override
    prov = fhir.audit("Provenance")[-1]
    assert prov["agent"][0]["who"]["reference"] == "Practitioner/dr-1"
    assert prov["activity"]["coding"][0]["code"] == "UPDATE"


@pytest.mark.parametrize(
    ("decision", "rationale", "text"),
    [
        ("override", None, ""),
        ("reject", None, ""),
        ("reject", "other", ""),
        ("approve", "artifact", ""),
    ],
)
async def test_override_or_reject_without_structured_rationale_is_422(
    fhir: FhirGateway, decision: str, rationale: str | None, text: str
) -> None:
    task, etag = await fhir.read_task()
    override = "stat" if decision == "override" else None
    response = await fhir.put_task(decision_body(task, decision, rationale, text, override), etag)
    assert response.status == 422
    assert (await fhir.read_task())[1] == etag
    assert fhir.events("review-refused")


async def test_missing_identity_is_422_and_audited(fhir: FhirGateway) -> None:
    task, etag = await fhir.read_task()
    anonymous = fhir.token(extra_claims={"fhirUser": ""})
    response = await fhir.put_task(decision_body(task), etag, anonymous)
    assert response.status == 422
    assert "fhirUser" in (await response.json(content_type=FHIR_JSON))["issue"][0]["diagnostics"]
    assert (await fhir.read_task())[1] == etag
    assert fhir.events("review-refused")


async def test_reject_of_high_confidence_flag_creates_secondary_review_task(
    fhir: FhirGateway,
) -> None:
    task, etag = await fhir.read_task()
    assert float(task["input"][0]["valueDecimal"]) < 0.95
    # Re-score above the secondary threshold: same Task, new version (dedupe).
    from tests.unit.fhir.samples import score, study

    with fhir.engine.begin() as conn:
        again = fhir.review.create_review_task(conn, study(), score(0.97))
    assert again["id"] == fhir.task_id
    task, etag = await fhir.read_task()
    response = await fhir.put_task(decision_body(task, "reject", "artifact"), etag)
    assert response.status == 200, await response.text()
    bundle = await fhir.get(f"Task?part-of=Task/{fhir.task_id}")
    assert bundle["total"] == 1
    secondary = bundle["entry"][0]["resource"]
    assert secondary["status"] == "requested"
    assert secondary["partOf"] == [{"reference": f"Task/{fhir.task_id}"}]
    assert secondary["focus"] == task["focus"]
    assert secondary.get("basedOn") == task.get("basedOn")
    assert secondary["performerType"][0]["coding"][0]["code"] == "secondary-reviewer"
    assert "owner" not in secondary
    sec_etag = f'W/"{secondary["meta"]["versionId"]}"'
    # The first reviewer (even holding the role) may not decide the secondary review.
    with fhir.engine.begin() as conn:
        now = datetime.now(UTC)
        grant(
            conn,
            practitioner="Practitioner/dr-1",
            roles=["reviewer", "secondary-reviewer"],
            valid_until=now + timedelta(days=1),
            granted_by="Practitioner/admin",
            now=now,
        )
    same = fhir.token(role="secondary-reviewer", user="Practitioner/dr-1")
    refused = await fhir.put_task(decision_body(secondary), sec_etag, same)
    assert refused.status == 403
    plain_reviewer = await fhir.put_task(
        decision_body(secondary), sec_etag, fhir.token(user="Practitioner/dr-2")
    )
    assert plain_reviewer.status == 403
    other = fhir.token(role="secondary-reviewer", user="Practitioner/sec-1")
    done = await fhir.put_task(decision_body(secondary), sec_etag, other)
    assert done.status == 200, await done.text()
    assert (await done.json(content_type=FHIR_JSON))["owner"]["reference"] == "Practitioner/sec-1"
    assert len(fhir.events("secondary-review-requested")) == 1


async def test_reject_below_the_secondary_threshold_creates_no_second_task(
    fhir: FhirGateway,
) -> None:
    task, etag = await fhir.read_task()
    response = await fhir.put_task(decision_body(task, "reject", "artifact"), etag)
    assert response.status == 200
    assert (await fhir.get(f"Task?part-of=Task/{fhir.task_id}"))["total"] == 0


async def test_restriction_period_end_from_priority_and_execution_period_on_start_complete(
    fhir: FhirGateway,
) -> None:
    task, etag = await fhir.read_task()
    period = task["restriction"]["period"]
    minutes = fhir.settings.review.sla_minutes[task["priority"]]
    assert parse_instant(period["end"]) - parse_instant(period["start"]) == timedelta(
        minutes=minutes
    )
    started = await fhir.put_task(dict(task, status="in-progress"), etag)
    body = await started.json(content_type=FHIR_JSON)
    assert "start" in body["executionPeriod"]
    done = await fhir.put_task(decision_body(body), started.headers["ETag"])
    final = await done.json(content_type=FHIR_JSON)
    assert final["executionPeriod"]["start"] == body["executionPeriod"]["start"]
    assert final["executionPeriod"]["end"] >= final["executionPeriod"]["start"]


async def test_relevant_history_references_every_provenance_written_for_the_task(
    fhir: FhirGateway,
) -> None:
    task, etag = await fhir.read_task()
    claimed = await fhir.put_task(dict(task, status="in-progress"), etag)
    body = await claimed.json(content_type=FHIR_JSON)
    done = await fhir.put_task(decision_body(body), claimed.headers["ETag"])
    final = await done.json(content_type=FHIR_JSON)
    written = {
        f"Provenance/{p['id']}"
        for p in fhir.audit("Provenance")
        if any(t["reference"].startswith(f"Task/{fhir.task_id}/") for t in p["target"])
    }
    assert {r["reference"] for r in final["relevantHistory"]} == written
    assert len(written) == 3
    by_target = await fhir.get(f"Provenance?target=Task/{fhir.task_id}")
    assert {f"Provenance/{e['resource']['id']}" for e in by_target["entry"]} == written


async def test_overdue_task_is_reassigned_to_the_backup_pool_counted_and_audited(
    fhir: FhirGateway,
) -> None:
    task, etag = await fhir.read_task()
    claimed = await fhir.put_task(dict(task, status="in-progress"), etag)
    assert claimed.status == 200
    deadline = parse_instant(task["restriction"]["period"]["end"])
    assert reassign_overdue(fhir.engine, fhir.settings, deadline - timedelta(seconds=1)) == []
    moved = reassign_overdue(fhir.engine, fhir.settings, deadline + timedelta(seconds=1))
    assert moved == [fhir.task_id]
    current, _ = await fhir.read_task()
    assert current["status"] == "requested"
    assert "owner" not in current
    assert current["performerType"][0]["coding"][0]["code"] == "backup-reviewer"
    assert current["businessStatus"]["coding"][0]["code"] == "reassigned-overdue"
    assert parse_instant(current["restriction"]["period"]["end"]) > deadline
    overdue = fhir.events("review-overdue")
    assert len(overdue) == 1
    assert details_of(overdue[0])["abandoned"] == "true"
    assert details_of(overdue[0])["previous-owner"] == "Practitioner/dr-1"
    assert abandoned_count(fhir.engine) == 1
    assert len(current["relevantHistory"]) == 3
    # Swept again: already in the backup pool, not moved twice.
    assert reassign_overdue(fhir.engine, fhir.settings, deadline + timedelta(hours=1)) == []
    assert (await fhir.get("Task?performer=backup-reviewer"))["total"] == 1
    # Completed later by a backup reviewer: still counted as abandoned once.
    current, etag = await fhir.read_task()
    done = await fhir.put_task(decision_body(current), etag, fhir.token(user="Practitioner/dr-2"))
    assert done.status == 200
    assert abandoned_count(fhir.engine) == 1


async def test_expired_reviewer_credential_is_403_and_audited(fhir: FhirGateway) -> None:
    with fhir.engine.begin() as conn:
        now = datetime.now(UTC)
        grant(
            conn,
            practitioner="Practitioner/dr-1",
            roles=["reviewer"],
            valid_until=now - timedelta(minutes=1),
            granted_by="Practitioner/admin",
            now=now,
        )
    task, etag = await fhir.read_task()
    response = await fhir.put_task(decision_body(task), etag)
    assert response.status == 403
    assert "expired" in (await response.json(content_type=FHIR_JSON))["issue"][0]["diagnostics"]
    assert (await fhir.read_task())[1] == etag
    refused = fhir.events("review-refused")
    assert refused
    assert refused[-1]["outcome"] == "4"
    unknown = await fhir.put_task(decision_body(task), etag, fhir.token(user="Practitioner/nobody"))
    assert unknown.status == 403


async def test_automation_switch_is_off_without_a_recorded_safety_decision(
    fhir: FhirGateway,
) -> None:
    now = datetime.now(UTC)
    with fhir.engine.begin() as conn:
        assert not switch_enabled(conn, "auto-escalate", "cxr-pneumothorax", now)
        record_decision(
            conn,
            SafetyDecision(
                switch="auto-escalate",
                scope="cxr-pneumothorax",
                decided_by="Clinical safety committee (chair Dr A)",
                decided_at=now - timedelta(days=1),
                valid_until=now + timedelta(days=30),
                reference="minutes 2026-11-29 section 4",
            ),
            recorded_by="Practitioner/admin",
            now=now,
        )
        assert switch_enabled(conn, "auto-escalate", "cxr-pneumothorax", now)
        assert not switch_enabled(conn, "auto-escalate", "ct-ich", now)
        assert not switch_enabled(
            conn, "auto-escalate", "cxr-pneumothorax", now + timedelta(days=31)
        )
    assert fhir.events("safety-decision-recorded")


async def test_reviewer_escalates_an_unflagged_study_with_the_escalate_operation(
    fhir: FhirGateway,
) -> None:
    from sqlalchemy import insert, select

    from gateway.persistence.tables import outbox, studies
    from tests.integration.fhir_api.conftest import study_row

    with fhir.engine.begin() as conn:
        conn.execute(insert(studies).values(study_row("1.2.3.77", patient="pat-7")))
    params = {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "priority", "valueCode": "stat"},
            {"name": "rationale", "valueCode": "clinical-context"},
            {"name": "note", "valueString": "missed apical pneumothorax"},
        ],
    }
    token = fhir.token(scopes="user/Task.c user/ImagingStudy.rs")
    response = await fhir.client.post(
        "/fhir/ImagingStudy/1.2.3.77/$escalate", json=params, headers=fhir.auth(token)
    )
    assert response.status == 200, await response.text()
    done = await response.json(content_type=FHIR_JSON)
    assert done["status"] == "completed"
    assert _outputs(done)["decision"]["coding"][0]["code"] == "override"
    assert _outputs(done)["override-priority"] == "stat"
    assert done["for"]["reference"] == "Patient/pat-7"
    assert len(done["relevantHistory"]) == 2
    assert fhir.events("review-escalated")
    with fhir.engine.connect() as conn:
        assert conn.execute(select(outbox)).first() is None  # no worklist destination configured
    no_rationale = dict(params, parameter=params["parameter"][:1])
    refused = await fhir.client.post(
        "/fhir/ImagingStudy/1.2.3.77/$escalate", json=no_rationale, headers=fhir.auth(token)
    )
    assert refused.status == 422


async def test_auto_escalate_acts_only_under_a_current_safety_decision(fhir: FhirGateway) -> None:
    from dataclasses import replace

    from sqlalchemy import select

    from gateway.persistence.tables import outbox
    from gateway.review_service import ReviewService
    from gateway.settings import WorklistSettings
    from tests.unit.fhir.samples import score, study

    settings = replace(fhir.settings, worklist=WorklistSettings(hl7_host="127.0.0.1", hl7_port=9))
    review = ReviewService(fhir.engine, settings)

    def flag(uid: str) -> None:
        with fhir.engine.begin() as conn:
            review.create_review_task(
                conn, replace(study(), study_instance_uid=uid, accession_number="ACC-9"),
                replace(score(0.995), study_instance_uid=uid),
            )  # fmt: skip

    def queued() -> list[str]:
        with fhir.engine.connect() as conn:
            return [r.study_instance_uid for r in conn.execute(select(outbox))]

    from sqlalchemy import insert

    from gateway.persistence.tables import studies
    from tests.integration.fhir_api.conftest import study_row

    with fhir.engine.begin() as conn:
        for uid in ("1.2.3.61", "1.2.3.62"):
            conn.execute(insert(studies).values(study_row(uid)))
    flag("1.2.3.61")
    assert queued() == []  # off: no decision recorded
    now = datetime.now(UTC)
    with fhir.engine.begin() as conn:
        record_decision(
            conn,
            SafetyDecision(
                switch="auto-escalate",
                scope="cxr-pneumothorax",
                decided_by="Clinical safety committee",
                decided_at=now - timedelta(hours=1),
                valid_until=now + timedelta(days=1),
                reference="minutes item 4",
            ),
            recorded_by="Practitioner/admin",
            now=now,
        )
    flag("1.2.3.62")
    assert queued() == ["1.2.3.62"]
