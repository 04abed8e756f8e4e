"""End to end, as a site would run it: storescu → scored study → review Task → OMI^O23 at the RIS.

The gateway runs as a separate process on 127.0.0.1; the RIS is a real MLLP listener; the PACS is
dcmtk's storescu. The whole run is traced and must address no host outside loopback.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.peers.gateway_process import GatewayProcess
from tests.peers.mllp_listener import MllpListener
from tests.peers.netguard import outside_peers

pytestmark = pytest.mark.integration

CS = "http://hitl-gateway.org/fhir/CodeSystem"


@pytest.fixture(scope="session")
def demo_registry(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """One embedded MLflow store with the demo model promoted, shared by the tests."""
    root = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{root}/mlflow.db"
    gw = GatewayProcess(
        root, f"sqlite:///{root}/unused.db", {"HITL_GATEWAY_MLFLOW__TRACKING_URI": uri}
    )
    trace = root / "demo-setup.strace"
    gw.cli("demo", "setup", trace=trace)
    return uri, trace


@pytest.fixture
def ris() -> Iterator[MllpListener]:
    """The RIS: a real MLLP listener that ACKs with AA."""
    listener = MllpListener().start()
    yield listener
    listener.stop()


def _gateway(
    tmp_path: Path, database_url: str, registry_uri: str, ris: MllpListener | None, **extra: str
) -> GatewayProcess:
    env = {
        "HITL_GATEWAY_MLFLOW__TRACKING_URI": registry_uri,
        "HITL_GATEWAY_ASSEMBLY__STABLE_SECONDS": "1",
        "HITL_GATEWAY_ASSEMBLY__POLL_SECONDS": "0.2",
        "HITL_GATEWAY_WORKLIST__POLL_SECONDS": "0.2",
        "HITL_GATEWAY_WORKLIST__BACKOFF_SECONDS": "0.2",
        **extra,
    }
    if ris is not None:
        env["HITL_GATEWAY_WORKLIST__HL7_HOST"] = "127.0.0.1"
        env["HITL_GATEWAY_WORKLIST__HL7_PORT"] = str(ris.port)
    gw = GatewayProcess(tmp_path / "data", database_url, env)
    gw.data_dir.mkdir(parents=True, exist_ok=True)
    gw.cli("db", "upgrade")
    return gw


def _storescu(gw: GatewayProcess, path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["storescu", "-aec", "HITLGW", "127.0.0.1", str(gw.dicom_port), str(path)],
        env={**os.environ, "TCP_NODELAY": "1"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _http(
    method: str,
    url: str,
    token: str | None = None,
    body: Any = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)  # noqa: S310
    req.add_header("Accept", "application/fhir+json")
    if data is not None:
        req.add_header("Content-Type", "application/fhir+json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310
            return resp.status, dict(resp.headers), json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), json.loads(err.read() or b"null")


def _wait_for(predicate: Any, timeout: float, what: str, gw: GatewayProcess) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}\n--- gateway log ---\n{gw.log()[-6000:]}")


def _open_tasks(gw: GatewayProcess, token: str) -> list[dict[str, Any]]:
    status, _, bundle = _http("GET", f"{gw.base_url}/fhir/Task?status=requested", token)
    assert status == 200, bundle
    return [e["resource"] for e in bundle.get("entry", [])]


def _write_study(path: Path, *, positive: bool, seed: int) -> Path:
    from scoring.phantoms import write_cxr_file

    write_cxr_file(
        path,
        positive=positive,
        seed=seed,
        patient_id=f"PAT{seed}",
        patient_name="Doe^Jane",
        accession=f"ACC{seed}",
        encounter_id=f"ENC{seed}",
    )
    return path


def _completed(task: dict[str, Any], decision: str, rationale: str) -> dict[str, Any]:
    body = dict(task)
    body["status"] = "completed"
    body["output"] = [
        {
            "type": {"coding": [{"system": f"{CS}/review-output-type", "code": "decision"}]},
            "valueCodeableConcept": {
                "coding": [{"system": f"{CS}/review-decision", "code": decision}]
            },
        },
        {
            "type": {"coding": [{"system": f"{CS}/review-output-type", "code": "rationale"}]},
            "valueCodeableConcept": {
                "coding": [{"system": f"{CS}/review-rationale", "code": rationale}]
            },
        },
    ]
    return body


def test_study_in_reviewed_task_out_worklist_told(
    tmp_path: Path,
    database_url: str,
    demo_registry: tuple[str, Path],
    ris: MllpListener,
) -> None:
    registry_uri, setup_trace = demo_registry
    gw = _gateway(tmp_path, database_url, registry_uri, ris)
    trace = tmp_path / "serve.strace"
    gw.start(trace=trace)
    try:
        token = gw.cli("token", "--role", "reviewer", "--user", "Practitioner/dr-jones").strip()
        gw.cli("reviewer", "credential", "--practitioner", "Practitioner/dr-jones",
               "--granted-by", "Practitioner/admin")  # fmt: skip
        sent = _storescu(gw, _write_study(tmp_path / "pos.dcm", positive=True, seed=101))
        assert sent.returncode == 0, sent.stderr

        tasks = _wait_for(lambda: _open_tasks(gw, token), 60, "a review Task", gw)
        assert len(tasks) == 1
        task = tasks[0]
        assert (task["status"], task["intent"]) == ("requested", "order")
        assert task["for"]["reference"] == "Patient/PAT101"
        assert task["priority"] in {"urgent", "asap", "stat"}

        status, headers, current = _http("GET", f"{gw.base_url}/fhir/Task/{task['id']}", token)
        assert status == 200
        assert headers["ETag"] == f'W/"{current["meta"]["versionId"]}"'

        status, headers, done = _http(
            "PUT",
            f"{gw.base_url}/fhir/Task/{task['id']}",
            token,
            _completed(current, "approve", "finding-confirmed"),
            {"If-Match": headers["ETag"]},
        )
        assert status == 200, done
        assert done["status"] == "completed"
        assert int(done["meta"]["versionId"]) == int(current["meta"]["versionId"]) + 1

        messages = ris.wait_for_messages(1, timeout=60)
        assert len(messages) == 1, gw.log()[-4000:]
        omi = messages[0]
        assert str(omi.segment("MSH")[9]) == "OMI^O23^OMI_O23"
        assert str(omi.segment("ORC")[1]) == "XO"
        assert str(omi.segment("TQ1")[9]).split("^")[0] in {"S", "A", "T"}
        assert str(omi.segment("PID")[3]).startswith("PAT101")
    finally:
        assert gw.stop() == 0, gw.log()[-4000:]

    verified = gw.cli("audit", "verify")
    assert "ok" in verified.lower()
    assert outside_peers(trace) == []
    assert outside_peers(setup_trace) == []


def test_below_threshold_study_is_recorded_and_audited_without_a_task(
    tmp_path: Path, demo_registry: tuple[str, Path]
) -> None:
    registry_uri, _ = demo_registry
    gw = _gateway(tmp_path, f"sqlite:///{tmp_path}/gw.db", registry_uri, None)
    gw.start()
    try:
        token = gw.cli("token", "--role", "reviewer", "--user", "Practitioner/dr-jones").strip()
        assert (
            _storescu(gw, _write_study(tmp_path / "neg.dcm", positive=False, seed=7)).returncode
            == 0
        )
        scored = _wait_for(lambda: _scores(gw), 60, "the score row", gw)
        assert scored[0]["outcome"] == "scored"
        assert scored[0]["score"] < 0.8
        assert scored[0]["model_version"]
        assert _open_tasks(gw, token) == []
    finally:
        gw.stop()
    assert "study-scored" in _audit_kinds(gw)


def test_model_failure_falls_back_to_standard_triage(tmp_path: Path) -> None:
    # A registry with no promoted model: every study must keep standard triage, recorded.
    gw = _gateway(
        tmp_path,
        f"sqlite:///{tmp_path}/gw.db",
        f"sqlite:///{tmp_path}/empty-registry.db",
        None,
    )
    gw.start()
    try:
        sent = gw.cli(
            "demo", "send", "--port", str(gw.dicom_port), "--positive", "1", "--negative", "1"
        )
        assert sent.count("status 0x0000") == 2, sent
        rows = _wait_for(lambda: len(_scores(gw)) == 2 and _scores(gw), 60, "fallback rows", gw)
        assert {r["outcome"] for r in rows} == {"standard-triage"}
        assert all(r["fallback_reason"] and r["model_version"] is None for r in rows)
        _, _, ready = _http("GET", f"{gw.base_url}/readyz")
        assert ready["status"] == "degraded"
    finally:
        gw.stop()
    assert "standard-triage" in _audit_kinds(gw)


def _scores(gw: GatewayProcess) -> list[dict[str, Any]]:
    from sqlalchemy import create_engine, select

    from gateway.persistence.tables import scores

    engine = create_engine(gw.env["HITL_GATEWAY_DATABASE__URL"])
    try:
        with engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(select(scores))]
    finally:
        engine.dispose()


def _audit_kinds(gw: GatewayProcess) -> set[str]:
    from sqlalchemy import create_engine, select

    from fhir_mapping.audit_event import DETAIL_EVENT, details_of
    from gateway.persistence.tables import audit_log

    engine = create_engine(gw.env["HITL_GATEWAY_DATABASE__URL"])
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                select(audit_log.c.resource).where(audit_log.c.resource_type == "AuditEvent")
            )
            return {details_of(json.loads(doc)).get(DETAIL_EVENT, "") for (doc,) in rows}
    finally:
        engine.dispose()
