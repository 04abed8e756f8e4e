"""Model governance against the running gateway: promote, roll back, tamper, head CT, unrouted.

The gateway runs as a subprocess; the operator drives `hitl-gateway model ...` with tokens from
the embedded issuer while it runs. The next study after a promotion or rollback must carry the
new version on its score row and its Task, without a restart.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fhir_mapping.task import task_facts
from tests.integration.test_walking_skeleton import (
    _audit_kinds,
    _gateway,
    _http,
    _open_tasks,
    _scores,
    _storescu,
    _wait_for,
    _write_study,
    demo_registry,
)
from tests.peers.gateway_process import GatewayProcess

pytestmark = pytest.mark.integration
__all__ = ["demo_registry"]  # the session's demo registry fixture, shared with the skeleton tests

CXR = "cxr-pneumothorax"


def _served(gw: GatewayProcess, use_case: str) -> str:
    _, _, ready = _http("GET", f"{gw.base_url}/readyz")
    facts = ready.get("model", {}).get("use_cases", {}).get(use_case, {})
    return str(facts.get("version", "")) if facts.get("status") == "ok" else ""


def _score_for(gw: GatewayProcess, seed: int) -> dict[str, Any] | None:
    rows = [r for r in _scores(gw) if r["use_case"] == CXR]
    return rows[seed] if len(rows) > seed else None


def _send_and_score(gw: GatewayProcess, tmp: Path, seed: int, index: int) -> dict[str, Any]:
    sent = _storescu(gw, _write_study(tmp / f"s{seed}.dcm", positive=True, seed=seed))
    assert sent.returncode == 0, sent.stderr
    row: dict[str, Any] = _wait_for(lambda: _score_for(gw, index), 60, f"score #{index}", gw)
    return row


def _metrics(gw: GatewayProcess, token: str) -> str:
    import urllib.request

    request = urllib.request.Request(f"{gw.base_url}/metrics")  # noqa: S310
    request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
        return str(response.read().decode())


def _task_version(gw: GatewayProcess, token: str, patient: str) -> str:
    for task in _open_tasks(gw, token):
        facts = task_facts(task)
        if facts.patient_id == patient and facts.model is not None:
            return facts.model.version
    return ""


def test_promote_rollback_and_tamper_while_the_gateway_runs(tmp_path: Path) -> None:
    gw = _gateway(
        tmp_path,
        f"sqlite:///{tmp_path}/gw.db",
        f"sqlite:///{tmp_path}/registry/mlflow.db",
        None,
        HITL_GATEWAY_MLFLOW__POLL_SECONDS="0.3",
    )
    gw.cli("demo", "setup")
    gw.start()
    try:
        reviewer = gw.cli("token", "--role", "reviewer", "--user", "Practitioner/r1").strip()
        admin = gw.cli("token", "--role", "admin", "--user", "Practitioner/owner").strip()
        approvers = [
            gw.cli("token", "--role", "model-approver", "--user", f"Practitioner/a{n}").strip()
            for n in (1, 2)
        ]
        first = _send_and_score(gw, tmp_path, 301, 0)
        assert (first["outcome"], first["model_version"]) == ("scored", "1")
        _wait_for(lambda: _task_version(gw, reviewer, "PAT301") == "1", 30, "Task v1", gw)

        # A second version, registered with its evidence and promoted through the gate.
        files = gw.data_dir / "models" / "cxr-pneumothorax-demo-1"
        metrics = tmp_path / "metrics.json"
        metrics.write_text(
            json.dumps(
                {
                    "auroc": 0.97,
                    "precision_at_review_threshold": 0.9,
                    "sensitivity_at_review_threshold": 0.85,
                    "review_threshold": 0.8,
                }
            )
        )
        for name in ("subgroup_report.md", "evaluation_data.md"):
            (tmp_path / name).write_text(f"# {name}\n")
        out = gw.cli(
            "model", "register", "--name", CXR, "--token", admin,
            "--onnx", str(files / "model.onnx"),
            "--contract", str(files / "input_contract.json"),
            "--metrics", str(metrics),
            "--model-card", str(files / "model_card.md"),
            "--artifact", str(tmp_path / "subgroup_report.md"),
        )  # fmt: skip
        assert "version 2" in out
        refused = gw.cli(
            "model", "promote", "--name", CXR, "--version", "2", "--token", admin, check=False
        )
        assert refused.startswith("1\n")
        assert "FAIL artifact:evaluation_data.md" in refused
        assert "FAIL distinct_approvers" in refused
        assert _served(gw, CXR) == "1"

        out = gw.cli(
            "model", "register", "--name", CXR, "--token", admin,
            "--onnx", str(files / "model.onnx"),
            "--contract", str(files / "input_contract.json"),
            "--metrics", str(metrics),
            "--model-card", str(files / "model_card.md"),
            "--artifact", str(tmp_path / "subgroup_report.md"),
            "--artifact", str(tmp_path / "evaluation_data.md"),
        )  # fmt: skip
        assert "version 3" in out
        for token in approvers:
            gw.cli("model", "approve", "--name", CXR, "--version", "3", "--token", token)
        gw.cli("model", "promote", "--name", CXR, "--version", "3", "--token", admin)
        _wait_for(lambda: _served(gw, CXR) == "3", 30, "version 3 served", gw)
        second = _send_and_score(gw, tmp_path, 302, 1)
        assert second["model_version"] == "3"
        scraped = _metrics(gw, admin)
        served_info = f'hitl_model_served_info{{model="{CXR}",use_case="{CXR}",version="3"}} 1'
        assert served_info in scraped
        assert f'hitl_model_alias_changes_total{{use_case="{CXR}"}}' in scraped
        _wait_for(lambda: _task_version(gw, reviewer, "PAT302") == "3", 30, "Task v3", gw)

        gw.cli("model", "rollback", "--name", CXR, "--token", admin)
        _wait_for(lambda: _served(gw, CXR) == "1", 30, "version 1 served again", gw)
        third = _send_and_score(gw, tmp_path, 303, 2)
        assert third["model_version"] == "1"
        _wait_for(lambda: _task_version(gw, reviewer, "PAT303") == "1", 30, "Task v1 again", gw)

        # The served file is swapped on disk: refused on the next poll, the study falls back.
        original = (files / "model.onnx").read_bytes()
        tampered = 0
        for path in (tmp_path / "registry").rglob("model.onnx"):
            if path.read_bytes() == original:
                path.write_bytes(original + b"\0")
                tampered += 1
        assert tampered >= 1
        _wait_for(lambda: _served(gw, CXR) == "", 30, "the tampered version refused", gw)
        _, _, ready = _http("GET", f"{gw.base_url}/readyz")
        assert ready["status"] == "degraded"
        fourth = _send_and_score(gw, tmp_path, 304, 3)
        assert fourth["outcome"] == "standard-triage"
        assert "SHA-256" in fourth["fallback_reason"]
    finally:
        gw.stop()
    kinds = _audit_kinds(gw)
    assert {"model-promoted", "model-rolled-back", "model-refused", "model-alias-changed"} <= kinds
    assert "ok" in gw.cli("audit", "verify").lower()


def test_head_ct_in_random_order_is_scored_and_a_hand_radiograph_is_unrouted(
    tmp_path: Path, demo_registry: tuple[str, Path]
) -> None:
    from scoring.ct_phantoms import write_ct_series
    from scoring.phantoms import make_cxr_dataset

    gw = _gateway(
        tmp_path,
        f"sqlite:///{tmp_path}/gw.db",
        demo_registry[0],
        None,
        HITL_GATEWAY_ASSEMBLY__PER_MODALITY="CT=1",
    )
    gw.start()
    try:
        paths = write_ct_series(tmp_path / "ct", True, seed=5, patient_id="CT5", accession="CT5")
        paths = [paths[i] for i in np.random.default_rng(7).permutation(len(paths))]
        for path in paths:
            assert _storescu(gw, path).returncode == 0
        hand = make_cxr_dataset(
            False, seed=77, patient_id="H77", patient_name="Doe^J", accession="H77"
        )
        hand.BodyPartExamined = "HAND"
        hand.save_as(tmp_path / "hand.dcm", enforce_file_format=True)
        assert _storescu(gw, tmp_path / "hand.dcm").returncode == 0
        rows = _wait_for(
            lambda: [r for r in _scores(gw) if r["use_case"] == "ct-haemorrhage"],
            60,
            "the CT score",
            gw,
        )
        assert rows[0]["outcome"] == "scored"
        assert rows[0]["score"] >= 0.8
        _wait_for(lambda: "study-unrouted" in _audit_kinds(gw), 60, "the unrouted hand study", gw)
    finally:
        gw.stop()


def _slow_model(path: Path) -> Path:
    """A valid classifier far too slow for the timeout (about 40 GMAC per study)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w1 = rng.normal(0, 0.1, (64, 1, 3, 3)).astype(np.float32)
    w2 = rng.normal(0, 0.01, (256, 64, 3, 3)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["image", "w1"], ["c1"], pads=[1, 1, 1, 1]),
            helper.make_node("Conv", ["c1", "w2"], ["c2"], pads=[1, 1, 1, 1]),
            helper.make_node("ReduceMean", ["c2"], ["m"], axes=[1, 2, 3], keepdims=0),
            helper.make_node("Sigmoid", ["m"], ["p"]),
            helper.make_node("Reshape", ["p", "shape"], ["probability"]),
        ],
        "slow",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 1, 512, 512])],
        [helper.make_tensor_value_info("probability", TensorProto.FLOAT, [1, 1])],
        initializer=[
            numpy_helper.from_array(w1, "w1"),
            numpy_helper.from_array(w2, "w2"),
            numpy_helper.from_array(np.asarray([1, 1], dtype=np.int64), "shape"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    path.write_bytes(model.SerializeToString())
    return path


def test_a_model_slower_than_the_timeout_is_killed_and_the_study_falls_back(
    tmp_path: Path,
) -> None:
    from scoring.contract import InputContract
    from scoring.registry import ModelRegistry

    uri = f"sqlite:///{tmp_path}/registry/mlflow.db"
    registry = ModelRegistry(uri)
    contract = InputContract(CXR, "image", 512, 512, "pneumothorax")
    version = registry.register_onnx(
        CXR, _slow_model(tmp_path / "slow.onnx"), contract, {"auroc": 0.5}, "slow"
    )
    registry.set_alias(CXR, "production", version)
    gw = _gateway(
        tmp_path,
        f"sqlite:///{tmp_path}/gw.db",
        uri,
        None,
        HITL_GATEWAY_SCORING__TIMEOUT_SECONDS="1",
    )
    gw.start()
    try:
        _wait_for(lambda: _served(gw, CXR) == version, 30, "the slow model served", gw)
        row = _send_and_score(gw, tmp_path, 401, 0)
        assert row["outcome"] == "standard-triage"
        assert "timed out after 0.9 s; inference worker killed" in row["fallback_reason"]
        _, _, ready = _http("GET", f"{gw.base_url}/readyz")
        assert ready["status"] == "degraded"
        processes = ready["model"]["worker_processes"][CXR]
        assert (processes["killed"], processes["status"]) == (1, "degraded")
    finally:
        gw.stop()
    assert "standard-triage" in _audit_kinds(gw)
