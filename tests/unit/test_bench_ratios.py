"""The ingest benchmark's round-by-round ratios."""

from __future__ import annotations

import pytest

from bench.ingest import Row, paired_ratios, spread, table


def _run(receiver: str, seconds: float) -> Row:
    return Row("CT", "C-STORE x4", receiver, 300, 150.0, seconds, 1.0, 200.0, 200.0)


def test_each_round_is_compared_with_the_reference_run_beside_it() -> None:
    gateway = [_run("gateway", 1.0), _run("gateway", 2.0), _run("gateway", 1.5)]
    orthanc = [_run("orthanc", 0.8), _run("orthanc", 1.0), _run("orthanc", 3.0)]

    assert paired_ratios(gateway, orthanc) == pytest.approx([0.8, 0.5, 2.0])


def test_rounds_missing_on_one_side_are_an_error() -> None:
    with pytest.raises(ValueError, match="shorter"):
        paired_ratios([_run("gateway", 1.0)], [])


def test_the_table_shows_each_rows_spread_of_round_by_round_ratios() -> None:
    rows = [_run("gateway", 1.0), _run("orthanc", 1.25)]
    by_round = {("CT", "C-STORE x4", "orthanc"): [0.77, 0.98, 0.88]}

    lines = table(rows, by_round).splitlines()

    gateway, orthanc = lines[2].split(" | "), lines[3].split(" | ")
    assert gateway[10] == "1.25"  # the ratio of the medians
    assert gateway[13] == "0.77-0.98 (0.88)"
    assert orthanc[13] == ""
    assert spread([]) == ""
