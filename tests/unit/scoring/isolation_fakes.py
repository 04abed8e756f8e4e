"""Scorers for child processes in the isolation tests (importable by a spawned child)."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Any

from gateway.domain.model import ModelIdentity
from gateway.ports import ModelOutput

IDENTITY = ModelIdentity("fake", "7", "a" * 64)


class _Fake:
    def score_with_statistic(self, paths: Sequence[str]) -> tuple[ModelOutput, float]:
        if list(paths) == ["hang"]:
            time.sleep(3600)
        if list(paths) == ["crash"]:
            os._exit(3)  # a codec's segfault, as the parent sees it
        if list(paths) == ["raise"]:
            raise ZeroDivisionError("inside the model")
        return ModelOutput(0.25, IDENTITY, "b" * 64, "finding"), 0.5


def fake_scorer(_spec: Any) -> _Fake:
    """The child's scorer."""
    return _Fake()
