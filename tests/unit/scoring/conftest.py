"""Scoring fixtures: one demo build, cheap fresh MLflow stores, no remote network."""

from __future__ import annotations

import ipaddress
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import scoring  # noqa: F401  (telemetry off before MLflow or onnxruntime load)
from scoring.demo_model import DemoModel, build_demo_model, write_demo_model
from scoring.registry import ModelRegistry


def _is_loopback(address: Any) -> bool:
    if isinstance(address, tuple) and address:
        try:
            return bool(ipaddress.ip_address(address[0]).is_loopback)
        except ValueError:
            return bool(address[0] == "localhost")
    return True  # AF_UNIX paths never leave the machine


@pytest.fixture(autouse=True, scope="package")
def _no_remote_network() -> Iterator[None]:
    """Fail any test here that opens a connection beyond loopback."""
    original = socket.socket.connect

    def guarded(self: socket.socket, address: Any) -> None:
        if not _is_loopback(address):
            raise AssertionError(f"non-loopback connection attempted: {address!r}")
        original(self, address)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", guarded)
        yield


@pytest.fixture(scope="package")
def demo_model() -> DemoModel:
    """The demo model, built once for these tests."""
    return build_demo_model()


@pytest.fixture(scope="package")
def demo_onnx(demo_model: DemoModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo model's files on disk."""
    return write_demo_model(demo_model, tmp_path_factory.mktemp("demo")).onnx_path


@pytest.fixture(scope="package")
def _migrated_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty, migrated MLflow SQLite database: migrations take about a second, copies do not."""
    db = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    ModelRegistry(f"sqlite:///{db}").client()
    return db


@pytest.fixture
def tracking_uri(tmp_path: Path, _migrated_store: Path) -> str:
    """A fresh embedded store for one test (artifacts beside it in tmp_path)."""
    db = tmp_path / "mlflow" / "mlflow.db"
    db.parent.mkdir()
    shutil.copyfile(_migrated_store, db)
    return f"sqlite:///{db}"


@pytest.fixture
def registry(tracking_uri: str) -> ModelRegistry:
    """A registry on a fresh embedded store."""
    return ModelRegistry(tracking_uri)
