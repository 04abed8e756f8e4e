"""Regenerates the settings table of docs/configuration.md: `python -m gateway.settings_doc`."""

from __future__ import annotations

import re
import sys
from pathlib import Path

from gateway.settings import configuration_table_markdown

DOC = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"


def main() -> int:
    """Rewrite the generated block between the settings markers."""
    text = DOC.read_text(encoding="utf-8")
    block = f"<!-- settings:begin -->\n{configuration_table_markdown()}\n<!-- settings:end -->"
    new, count = re.subn(
        r"<!-- settings:begin -->.*?<!-- settings:end -->", block, text, flags=re.S
    )
    if count != 1:
        print("docs/configuration.md lacks the settings markers", file=sys.stderr)
        return 1
    DOC.write_text(new, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
