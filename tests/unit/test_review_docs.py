"""docs/review-workflow.md lists every published rationale code with its decisions."""

from __future__ import annotations

from pathlib import Path

from fhir_mapping.codesystems import RATIONALES
from gateway.domain.model import Decision

DOC = Path(__file__).resolve().parents[2] / "docs" / "review-workflow.md"


def test_every_rationale_code_is_documented_with_its_decisions() -> None:
    text = DOC.read_text(encoding="utf-8")
    for code, rationale in RATIONALES.items():
        decisions = ", ".join(d.value for d in Decision if d in rationale.decisions)
        free = " required " if rationale.text_required else " "
        assert f"| `{code}` | {decisions} |{free}|" in text, code
