"""docs/worklist.md states the one priority table exactly as the code has it."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.domain.priority import PRIORITY_TABLE, Priority
from gateway.settings import WorklistDestination

DOC = (Path(__file__).resolve().parents[3] / "docs" / "worklist.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("priority", list(Priority))
def test_every_mapping_row_is_documented(priority: Priority) -> None:
    codes = PRIORITY_TABLE[priority]
    rows = [line for line in DOC.splitlines() if line.startswith(f"| {priority.value} |")]
    assert len(rows) == 1
    cells = [c.strip() for c in rows[0].strip("|").split("|")]
    assert cells[1].split()[0] == codes.hl7_0485
    assert cells[2] == codes.hl7_0027
    assert cells[3] == codes.ups


def test_every_destination_key_is_documented() -> None:
    for name in WorklistDestination.__dataclass_fields__:
        assert f"{name} = " in DOC or f'"{name}"' in DOC, name
