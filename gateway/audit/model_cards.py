"""Model cards and registry facts for audit packages, read from the MLflow model registry."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any


class RegistryModelCards:
    """`ModelCardSource` over `scoring.registry.ModelRegistry` (MLflow loads on first use)."""

    def __init__(self, tracking_uri: str) -> None:
        self.tracking_uri = tracking_uri
        self._registry: Any = None

    def describe(self, name: str, version: str) -> dict[str, Any]:
        """Model card text, version tags (gate results, approvals, contract) and run metrics."""
        from scoring.registry import MODEL_CARD_FILE, ModelRegistry

        if self.tracking_uri.startswith("sqlite:///"):
            store = Path(self.tracking_uri.removeprefix("sqlite:///"))
            if not store.exists():  # reading must not create an empty registry as a side effect
                raise LookupError(f"no model registry at {store}")
        if self._registry is None:
            self._registry = ModelRegistry(self.tracking_uri)
        client = self._registry.client()
        model_version = client.get_model_version(name, version)
        card = ""
        if model_version.run_id:
            with tempfile.TemporaryDirectory() as tmp:
                local = client.download_artifacts(model_version.run_id, MODEL_CARD_FILE, tmp)
                card = Path(local).read_text(encoding="utf-8")
        return {
            "modelCard": card,
            "tags": dict(model_version.tags),
            "metrics": self._registry.metrics(name, version),
            "aliases": list(getattr(model_version, "aliases", []) or []),
            "status": str(model_version.status),
        }
