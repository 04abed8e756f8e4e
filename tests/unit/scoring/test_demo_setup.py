"""`demo setup` goes through the promotion gate with recorded approvers, once, and yields."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy import create_engine

from fhir_mapping.audit_event import DETAIL_EVENT, details_of
from gateway.audit.trail import search
from gateway.domain.errors import GatewayError
from gateway.settings import MlflowSettings, Settings, StorageSettings
from scoring import demo_setup
from scoring.demo_model import DemoModel
from scoring.demo_setup import DEMO_APPROVERS, DemoSpec, setup_demo
from scoring.registry import ModelRegistry


def _settings(tmp_path: Path, tracking_uri: str) -> Settings:
    return replace(
        Settings(),
        storage=StorageSettings(data_dir=tmp_path / "var"),
        mlflow=MlflowSettings(tracking_uri=tracking_uri),
    )


@pytest.fixture
def one_spec(monkeypatch: pytest.MonkeyPatch, demo_model: DemoModel) -> list[int]:
    """Only the chest X-ray demo, built from the package's demo model; counts builds."""
    builds: list[int] = []

    def build() -> DemoModel:
        builds.append(1)
        return demo_model

    spec = DemoSpec("cxr-pneumothorax", "cxr-pneumothorax-demo-1", build, "# data\n")
    monkeypatch.setattr(demo_setup, "demo_specs", lambda: [spec])
    return builds


def test_demo_setup_is_gated_audited_and_idempotent(
    tmp_path: Path, tracking_uri: str, one_spec: list[int]
) -> None:
    settings = _settings(tmp_path, tracking_uri)
    first = setup_demo(settings)
    second = setup_demo(settings)
    assert first == second
    assert len(one_spec) == 1
    registry = ModelRegistry(tracking_uri)
    tags = registry.version_tags("cxr-pneumothorax", first[0].version)
    assert tags["promoted_by"] == "Practitioner/demo-setup"
    engine = create_engine(settings.database_url)
    with engine.connect() as conn:
        events = search(conn, "AuditEvent")
        provenance = search(conn, "Provenance")
    engine.dispose()
    kinds = [details_of(e).get(DETAIL_EVENT) for e in events]
    assert kinds == ["model-registered", "model-approved", "model-approved", "model-promoted"]
    verifiers = {a["who"]["reference"] for a in provenance[0]["agent"]} - {
        "Practitioner/demo-setup"
    }
    assert verifiers == set(DEMO_APPROVERS)


def test_demo_setup_leaves_a_governed_production_version_alone(
    tmp_path: Path, tracking_uri: str, one_spec: list[int], demo_model: DemoModel, demo_onnx: Path
) -> None:
    registry = ModelRegistry(tracking_uri)
    version = registry.register_onnx(
        "cxr-pneumothorax", demo_onnx, demo_model.contract, demo_model.metrics, "card"
    )
    registry.set_alias("cxr-pneumothorax", "production", version)
    with pytest.raises(GatewayError, match="not set up by the demo") as caught:
        setup_demo(_settings(tmp_path, tracking_uri))
    assert caught.value.code == "conflict"
    assert registry.resolve("cxr-pneumothorax").version == version
