"""Audit packages: export for a period or a patient, PHI masking, offline verification."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, insert

from fhir_mapping.canonical import canonical_json
from gateway.audit import trail
from gateway.audit.checkpoint import create_checkpoint
from gateway.audit.package import ExportRequest, export_package
from gateway.audit.package_verify import verify_package
from gateway.audit.signing import AuditKeyring, keys_dir_for
from gateway.cli import main
from gateway.persistence.db import make_engine
from gateway.persistence.migrate import upgrade
from gateway.persistence.tables import task_history
from gateway.pipeline import Event
from tests.unit.audit.support import GATEWAY, MODEL, REVIEWER, decision_event, provenance

T0 = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
MARCH = ("2026-03-01", "2026-04-01")


class Cards:
    """A model card source standing in for the registry (the registry is tested in scoring)."""

    def describe(self, name: str, version: str) -> dict[str, Any]:
        """A card for the one model the fixture uses."""
        if (name, version) != (MODEL.name, MODEL.version):
            raise LookupError(f"no {name} {version}")
        return {"modelCard": "# cxr-ptx 7\ndemo, not for clinical use", "tags": {"gate": "passed"}}


def _task(task_id: str, patient: str, version: int) -> str:
    return canonical_json(
        {
            "resourceType": "Task",
            "id": task_id,
            "meta": {"versionId": str(version)},
            "status": "requested" if version == 1 else "completed",
            "intent": "order",
            "for": {"reference": f"Patient/{patient}", "display": "DOE^JANE"},
        }
    )


def _seed(engine: Engine, keyring: AuditKeyring) -> None:
    def event(kind: Event, patient: str, task: str, minutes: float, **more: Any) -> None:
        version = 1 if kind is Event.REVIEW_REQUESTED else 2
        values: dict[str, Any] = {
            "kind": kind,
            "occurred_at": T0 + timedelta(minutes=minutes),
            "entities": (f"Task/{task}/_history/{version}",),
            "request_id": "",
            "subtype": "create" if version == 1 else "update",
        }
        if kind is Event.REVIEW_REQUESTED:
            values |= {"actor": GATEWAY, "rationale": "", "detail": {}}
        values.update(more)
        trail.record_event(conn, decision_event(patient, **values))

    with engine.begin() as conn:
        event(Event.DECISION_RECORDED, "p1", "t-0", -60 * 24 * 30)  # February: outside
        event(Event.REVIEW_REQUESTED, "p1", "t-1", 0)
        event(Event.DECISION_RECORDED, "p1", "t-1", 1.5, detail={"decision": "approve"})
        trail.append_provenance(
            conn, {**provenance("t-1"), "recorded": "2026-03-02T08:01:00Z"}, patient_id="p1"
        )
        event(Event.REVIEW_REQUESTED, "p2", "t-2", 10)
        event(
            Event.DECISION_RECORDED,
            "p2",
            "t-2",
            14,
            rationale="not-a-finding: artefact",
            detail={"decision": "reject"},
        )
        event(Event.STANDARD_TRIAGE, "p2", "t-2", 20, actor=GATEWAY, outcome_desc="timeout")
        event(Event.WORKLIST_DEAD_LETTERED, "p1", "t-1", 30, actor=GATEWAY, outcome="8")
        for task, patient in (("t-0", "p1"), ("t-1", "p1"), ("t-2", "p2")):
            for version in (1, 2):
                conn.execute(
                    insert(task_history).values(
                        task_id=task,
                        version_id=version,
                        last_updated=T0,
                        resource=_task(task, patient, version),
                    )
                )
        create_checkpoint(conn, keyring, "manual")


@pytest.fixture
def gateway_env(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Engine, AuditKeyring]]:
    """A migrated database with a month of records, and the CLI pointed at it."""
    monkeypatch.setenv("HITL_GATEWAY_DATABASE__URL", database_url)
    monkeypatch.setenv("HITL_GATEWAY_STORAGE__DATA_DIR", str(tmp_path / "var"))
    monkeypatch.setenv("HITL_GATEWAY_MLFLOW__TRACKING_URI", f"sqlite:///{tmp_path}/none/x.db")
    engine = make_engine(database_url)
    upgrade(engine)
    keyring = AuditKeyring(keys_dir_for(tmp_path / "var", ""))
    _seed(engine, keyring)
    try:
        yield engine, keyring
    finally:
        engine.dispose()


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_export_writes_a_complete_signed_package(
    gateway_env: tuple[Engine, AuditKeyring], tmp_path: Path
) -> None:
    engine, keyring = gateway_env
    out = tmp_path / "package"
    request = ExportRequest(datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 4, 1, tzinfo=UTC))
    manifest = export_package(engine, keyring, out, request, actor=REVIEWER, model_cards=Cards())
    events = _lines(out / "AuditEvent.ndjson")
    assert len(events) == 6
    assert len(_lines(out / "Provenance.ndjson")) == 1
    tasks = _lines(out / "Task.ndjson")
    assert [(t["id"], t["meta"]["versionId"]) for t in tasks] == [
        ("t-1", "1"),
        ("t-1", "2"),
        ("t-2", "1"),
        ("t-2", "2"),
    ]
    (model,) = json.loads((out / "models.json").read_text())
    assert (model["name"], model["version"], model["sha256"]) == (MODEL.name, "7", MODEL.sha256)
    assert "not for clinical use" in model["registry"]["modelCard"]
    compliance = json.loads((out / "compliance.json").read_text())
    assert compliance["decisions"] == 2
    assert compliance["completeRationaleShare"] == 1.0
    assert compliance["decisionRates"] == {"approve": 0.5, "reject": 0.5}
    assert compliance["rationaleCodes"]["reject"] == {"not-a-finding": 1}
    assert compliance["timeToDecisionSeconds"]["max"] == 240.0
    assert (compliance["fallbacks"], compliance["deadLetters"]) == (1, 1)
    verification = json.loads((out / "verification.json").read_text())
    assert verification["ok"]
    assert verification["signaturesChecked"]
    assert manifest["checkpoint"]["number"] == 1
    report = verify_package(out, keyring.public_jwks())
    assert report.ok, report.problems
    assert any("records recompute" in c for c in report.checked)
    with engine.connect() as conn:
        exported = trail.search(conn, "AuditEvent", since=T0 + timedelta(days=60))
    assert any("package-exported" in json.dumps(e) for e in exported)


def test_cli_export_for_one_patient_with_masking_and_offline_check(
    gateway_env: tuple[Engine, AuditKeyring], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _engine, _keyring = gateway_env
    out = tmp_path / "masked"
    argv = ["audit", "export", "--from", MARCH[0], "--to", MARCH[1], "--patient", "p1"]
    assert main([*argv, "--mask-phi", str(out)]) == 0
    body = (out / "AuditEvent.ndjson").read_text() + (out / "Task.ndjson").read_text()
    assert "Patient/p1" not in body
    assert "DOE^JANE" not in body
    events = _lines(out / "AuditEvent.ndjson")
    assert len(events) == 3  # request, decision and dead letter of p1 in March
    pseudonyms = {trail.audit_event_patient(e) for e in events}
    assert len(pseudonyms) == 1
    assert pseudonyms.pop().startswith("masked-")
    jwks = tmp_path / "audit.jwks.json"
    assert main(["audit", "public-key", str(jwks)]) == 0
    capsys.readouterr()
    assert main(["audit", "verify-package", str(out), "--public-key", str(jwks)]) == 0
    assert "audit package OK" in capsys.readouterr().out
    assert main([*argv, str(out)]) == 2  # the directory is not empty: refused


def _tampered(out: Path, how: str, tmp_path: Path) -> None:
    if how == "edit-record":
        lines = (out / "AuditEvent.ndjson").read_text().splitlines()
        lines[1] = lines[1].replace('"outcome":"0"', '"outcome":"4"')
        (out / "AuditEvent.ndjson").write_text("\n".join(lines) + "\n")
    elif how == "edit-record-and-manifest":
        path = out / "compliance.json"
        path.write_text(path.read_text().replace('"deadLetters": 1', '"deadLetters": 0'))
        manifest = json.loads((out / "manifest.json").read_text())
        for entry in manifest["files"]:
            if entry["name"] == "compliance.json":
                entry["sha256"] = __import__("hashlib").sha256(path.read_bytes()).hexdigest()
        (out / "manifest.json").write_text(canonical_json(manifest))
    elif how == "re-signed-by-another-key":
        manifest = json.loads((out / "manifest.json").read_text())
        other = AuditKeyring(tmp_path / "other").active()
        (out / "manifest.jws").write_text(other.sign_jws(manifest))
    elif how == "added-file":
        (out / "extra.ndjson").write_text("{}\n")
    elif how == "removed-file":
        (out / "Task.ndjson").unlink()


@pytest.mark.parametrize(
    ("how", "problem"),
    [
        ("edit-record", "AuditEvent.ndjson was changed"),
        ("edit-record-and-manifest", "differs from the signed manifest"),
        ("re-signed-by-another-key", "is not in the public key set"),
        ("added-file", "extra.ndjson is not listed"),
        ("removed-file", "Task.ndjson is missing"),
    ],
)
def test_tampered_packages_fail_verification(
    gateway_env: tuple[Engine, AuditKeyring], tmp_path: Path, how: str, problem: str
) -> None:
    engine, keyring = gateway_env
    out = tmp_path / "package"
    request = ExportRequest(datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 4, 1, tzinfo=UTC))
    export_package(engine, keyring, out, request, actor=REVIEWER)
    assert verify_package(out, keyring.public_jwks()).ok
    _tampered(out, how, tmp_path)
    report = verify_package(out, keyring.public_jwks())
    assert not report.ok
    assert any(problem in p for p in report.problems), report.problems
