"""The dependency rules of the architecture, checked on the source itself."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FRAMEWORKS = (
    "aiohttp",
    "pynetdicom",
    "sqlalchemy",
    "mlflow",
    "onnxruntime",
    "onnx",
    "alembic",
    "psycopg",
    "fhir",
    "jwt",
)


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


CORE = [*_modules("gateway/domain"), ROOT / "gateway/pipeline.py", ROOT / "gateway/ports.py"]


@pytest.mark.parametrize("path", CORE, ids=lambda p: str(p.relative_to(ROOT)))
def test_domain_core_imports_no_framework(path: Path) -> None:
    bad = {n for n in _imports(path) if n.split(".")[0] in FRAMEWORKS}
    assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


@pytest.mark.parametrize(
    "path",
    [*_modules("fhir_mapping"), *_modules("scoring")],
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_mapping_and_scoring_never_import_the_listeners(path: Path) -> None:
    bad = {
        n
        for n in _imports(path)
        if n.startswith(
            ("gateway.listeners", "gateway.app", "gateway.cli", "aiohttp", "pynetdicom")
        )
    }
    assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


@pytest.mark.parametrize("path", _modules("fhir_mapping"), ids=lambda p: str(p.relative_to(ROOT)))
def test_fhir_mapping_does_no_io(path: Path) -> None:
    bad = {
        n
        for n in _imports(path)
        if n.split(".")[0] in {"sqlalchemy", "aiohttp", "socket", "requests", "urllib", "gateway"}
        and not n.startswith(("gateway.domain", "gateway.pipeline"))
    }
    assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


@pytest.mark.parametrize("path", _modules("fhir_mapping"), ids=lambda p: str(p.relative_to(ROOT)))
def test_fhir_models_come_through_one_module(path: Path) -> None:
    if path.name == "r4.py":
        return
    bad = {n for n in _imports(path) if n.startswith("fhir.resources")}
    assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}; use fhir_mapping.r4"


def test_only_the_composition_root_wires_concrete_adapters() -> None:
    offenders = []
    for path in _modules("gateway"):
        if path.name in {"app.py", "cli.py"} or "listeners" in path.parts:
            continue
        if any(n.startswith("adapters") for n in _imports(path)):
            offenders.append(str(path.relative_to(ROOT)))
    assert not offenders
