"""Registry on an embedded SQLite store: register, alias, resolve, and every refusal."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.domain.errors import ModelUnavailable
from scoring.contract import CONTRACT_ARTIFACT
from scoring.demo_model import DEMO_CONTRACT, DemoModel
from scoring.registry import SHA256_TAG, ModelRegistry

NAME = "cxr-pneumothorax"


def _register(registry: ModelRegistry, demo_model: DemoModel, onnx_path: Path) -> str:
    return registry.register_onnx(
        NAME, onnx_path, DEMO_CONTRACT, demo_model.metrics, demo_model.model_card, {"k": "v"}
    )


def test_register_alias_resolve_round_trip(
    registry: ModelRegistry, demo_model: DemoModel, demo_onnx: Path, tmp_path: Path
) -> None:
    version = _register(registry, demo_model, demo_onnx)
    registry.set_alias(NAME, "production", version)
    resolved = registry.resolve(NAME, "production")

    assert (resolved.name, resolved.version, resolved.sha256) == (NAME, "1", demo_model.sha256)
    assert resolved.contract == DEMO_CONTRACT
    assert resolved.local_path.read_bytes() == demo_model.onnx_bytes
    assert resolved.local_path.is_relative_to(tmp_path)
    assert (resolved.local_path.parent / "model_card.md").read_text() == demo_model.model_card
    assert (resolved.local_path.parent / CONTRACT_ARTIFACT).read_text() == DEMO_CONTRACT.to_json()
    assert registry.metrics(NAME, version)["auroc"] == demo_model.metrics["auroc"]
    tags = registry.version_tags(NAME, version)
    assert (tags[SHA256_TAG], tags["k"]) == (demo_model.sha256, "v")
    assert resolved.identity().version == "1"
    assert registry.find_version(NAME, demo_model.sha256) == "1"
    assert registry.find_version(NAME, "0" * 64) is None


def test_a_second_version_gets_the_next_number(
    registry: ModelRegistry, demo_model: DemoModel, demo_onnx: Path
) -> None:
    assert _register(registry, demo_model, demo_onnx) == "1"
    assert _register(registry, demo_model, demo_onnx) == "2"
    registry.set_alias(NAME, "production", "2")
    assert registry.resolve(NAME).version == "2"


def test_model_file_changed_on_disk_is_refused(
    registry: ModelRegistry, demo_model: DemoModel, demo_onnx: Path
) -> None:
    registry.set_alias(NAME, "production", _register(registry, demo_model, demo_onnx))
    path = registry.resolve(NAME).local_path
    path.write_bytes(path.read_bytes() + b"\0")
    with pytest.raises(ModelUnavailable, match=r"SHA-256 .* registered .* refusing"):
        registry.resolve(NAME)


def test_missing_model_file_is_refused(
    registry: ModelRegistry, demo_model: DemoModel, demo_onnx: Path
) -> None:
    registry.set_alias(NAME, "production", _register(registry, demo_model, demo_onnx))
    registry.resolve(NAME).local_path.unlink()
    with pytest.raises(ModelUnavailable, match="missing"):
        registry.resolve(NAME)


def test_missing_alias_or_model_is_refused(
    registry: ModelRegistry, demo_model: DemoModel, demo_onnx: Path
) -> None:
    with pytest.raises(ModelUnavailable, match="no version under alias"):
        registry.resolve(NAME)
    _register(registry, demo_model, demo_onnx)
    with pytest.raises(ModelUnavailable, match="alias 'production'"):
        registry.resolve(NAME, "production")


def test_version_without_hash_tag_is_refused(
    registry: ModelRegistry, demo_model: DemoModel, demo_onnx: Path
) -> None:
    version = _register(registry, demo_model, demo_onnx)
    registry.set_alias(NAME, "production", version)
    registry.client().delete_model_version_tag(NAME, version, SHA256_TAG)
    with pytest.raises(ModelUnavailable, match="no registered onnx_sha256"):
        registry.resolve(NAME)
