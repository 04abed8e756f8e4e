"""Scorers for child processes in the isolation tests (importable by a spawned child)."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from gateway.domain.model import ModelIdentity
from gateway.ports import ModelOutput

IDENTITY = ModelIdentity("fake", "7", "a" * 64)


class _Fake:
    def score_with_statistic(self, model: Any, paths: Sequence[str]) -> tuple[ModelOutput, float]:
        if list(paths) == ["hang"]:
            time.sleep(3600)
        if list(paths) == ["crash"]:
            os._exit(3)  # a codec's segfault, as the parent sees it
        if list(paths) == ["raise"]:
            raise ZeroDivisionError("inside the model")
        if list(paths) == ["pid"]:
            return ModelOutput(0.25, IDENTITY, str(os.getpid()), "finding"), 0.5
        return ModelOutput(0.25, model, "b" * 64, "finding"), 0.5


def fake_scorer(_spec: Any) -> _Fake:
    """The child's scorer."""
    return _Fake()


class _ReportingModules:
    """The product's child scorer, with the label replaced by the heavy modules it has loaded."""

    def __init__(self, spec: Any) -> None:
        from scoring.isolation import onnx_scorer

        self._scorer = onnx_scorer(spec)

    def score_with_statistic(self, model: Any, paths: Sequence[str]) -> tuple[ModelOutput, float]:
        output, mean = self._scorer.score_with_statistic(model, paths)
        heavy = sorted(m for m in ("mlflow", "sqlalchemy", "aiohttp") if m in sys.modules)
        return replace(output, label=",".join(heavy)), mean


def product_scorer_reporting_modules(spec: Any) -> _ReportingModules:
    """The child's product scorer, reporting which heavy modules the child imported."""
    return _ReportingModules(spec)
