"""The ingest benchmark's round-by-round ratios."""

from __future__ import annotations

import pytest

from bench.ingest import Row, paired_ratios


def _run(receiver: str, seconds: float) -> Row:
    return Row("CT", "C-STORE x4", receiver, 300, 150.0, seconds, 1.0, 200.0, 200.0)


def test_each_round_is_compared_with_the_reference_run_beside_it() -> None:
    gateway = [_run("gateway", 1.0), _run("gateway", 2.0), _run("gateway", 1.5)]
    orthanc = [_run("orthanc", 0.8), _run("orthanc", 1.0), _run("orthanc", 3.0)]

    assert paired_ratios(gateway, orthanc) == pytest.approx([0.8, 0.5, 2.0])


def test_rounds_missing_on_one_side_are_an_error() -> None:
    with pytest.raises(ValueError, match="shorter"):
        paired_ratios([_run("gateway", 1.0)], [])
