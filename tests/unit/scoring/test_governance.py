"""Promotion gate: refusals list every failing criterion; promotion and rollback are audited."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, select

from fhir_mapping.audit_event import DETAIL_EVENT, details_of
from gateway.audit.trail import search
from gateway.domain.errors import Forbidden, InvalidInput
from gateway.domain.model import Actor
from gateway.persistence.migrate import upgrade
from gateway.persistence.tables import model_devices
from scoring.demo_model import DEMO_CONTRACT, DemoModel
from scoring.governance import ModelGovernance, PromotionRefused, approval_key
from scoring.registry import ModelRegistry

NAME = "cxr-pneumothorax"
ADMIN = Actor("Practitioner/owner", roles=("admin",), token_id="t0")
DOCS = {"subgroup_report.md": "# subgroups\n", "evaluation_data.md": "# data\n"}


def approver(n: int, role: str = "model-approver") -> Actor:
    """An approver identity as the token validator would produce it."""
    return Actor(f"Practitioner/approver-{n}", roles=(role,), token_id=f"t{n}")


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    """A migrated gateway database."""
    db = create_engine(f"sqlite:///{tmp_path}/gw.db")
    upgrade(db)
    yield db
    db.dispose()


@pytest.fixture
def governance(registry: ModelRegistry, engine: Engine) -> ModelGovernance:
    """Governance over a fresh registry and database."""
    return ModelGovernance(registry, engine)


def _register(
    gov: ModelGovernance,
    model: DemoModel,
    onnx: Path,
    *,
    metrics: dict[str, float] | None = None,
    docs: dict[str, str] | None = None,
) -> str:
    return gov.register(
        NAME,
        onnx,
        DEMO_CONTRACT,
        metrics or model.metrics,
        model.model_card,
        ADMIN,
        artifacts=DOCS if docs is None else docs,
    ).version


def _kinds(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        return [details_of(a).get(DETAIL_EVENT, "") for a in search(conn, "AuditEvent")]


def test_refusal_lists_every_failing_criterion(
    governance: ModelGovernance,
    registry: ModelRegistry,
    demo_model: DemoModel,
    demo_onnx: Path,
    engine: Engine,
) -> None:
    weak = {**demo_model.metrics, "auroc": 0.7}
    version = _register(
        governance, demo_model, demo_onnx, metrics=weak, docs={"evaluation_data.md": "x"}
    )
    governance.approve(NAME, version, approver(1))
    # An approval typed into the registry by someone without the role (no audit record either).
    registry.set_version_tags(
        NAME,
        version,
        {
            approval_key("Practitioner/intruder"): json.dumps(
                {
                    "approver": "Practitioner/intruder",
                    "roles": ["reviewer"],
                    "sha256": demo_model.sha256,
                }
            )
        },
    )
    with pytest.raises(PromotionRefused) as refused:
        governance.promote(NAME, version, ADMIN)
    failing = {c.name for c in refused.value.criteria if not c.passed}
    assert failing == {
        "min_auroc",
        "artifact:subgroup_report.md",
        "distinct_approvers",
        "approval:Practitioner/intruder",
    }
    detail = {c.name: c.detail for c in refused.value.criteria}
    assert "does not hold the model-approver role" in detail["approval:Practitioner/intruder"]
    assert "1 valid approval" in detail["distinct_approvers"]
    assert registry.alias_version(NAME, "production") is None
    assert _kinds(engine)[-1] == "model-refused"


def test_approval_needs_the_role_and_counts_once_per_person(
    governance: ModelGovernance, demo_model: DemoModel, demo_onnx: Path, engine: Engine
) -> None:
    version = _register(governance, demo_model, demo_onnx)
    with pytest.raises(Forbidden):
        governance.approve(NAME, version, approver(1, role="reviewer"))
    governance.approve(NAME, version, approver(1))
    with pytest.raises(InvalidInput, match="already approved"):
        governance.approve(NAME, version, approver(1))
    assert _kinds(engine).count("model-refused") == 2
    assert _kinds(engine).count("model-approved") == 1


def test_promotion_moves_alias_with_provenance_device_and_rollback(
    governance: ModelGovernance,
    registry: ModelRegistry,
    demo_model: DemoModel,
    demo_onnx: Path,
    engine: Engine,
) -> None:
    first = _register(governance, demo_model, demo_onnx)
    for n in (1, 2):
        governance.approve(NAME, first, approver(n))
    report = governance.promote(NAME, first, ADMIN)
    assert report.passed
    assert registry.resolve(NAME).version == first

    second = _register(governance, demo_model, demo_onnx)
    with pytest.raises(PromotionRefused):
        governance.promote(NAME, second, ADMIN)  # no approvals of version 2 yet
    for n in (2, 3):
        governance.approve(NAME, second, approver(n))
    governance.promote(NAME, second, ADMIN)
    assert registry.resolve(NAME).version == second

    with engine.connect() as conn:
        provenance = search(conn, "Provenance")[-1]
        devices = {r.id: r.status for r in conn.execute(select(model_devices))}
    assert provenance["target"] == [{"reference": f"Device/{NAME}-{second}"}]
    who = {a["who"]["reference"] for a in provenance["agent"]}
    assert who == {"Practitioner/approver-2", "Practitioner/approver-3", ADMIN.reference}
    assert provenance["entity"][0]["what"]["reference"] == f"Device/{NAME}-{first}"
    assert devices == {f"{NAME}-{first}": "inactive", f"{NAME}-{second}": "active"}

    back = governance.rollback(NAME, ADMIN)
    assert back.version == first
    assert registry.resolve(NAME).version == first
    kinds = _kinds(engine)
    assert kinds.count("model-promoted") == 2
    assert kinds[-1] == "model-rolled-back"


def test_rollback_refuses_a_version_that_never_passed_the_gate(
    governance: ModelGovernance, demo_model: DemoModel, demo_onnx: Path
) -> None:
    first = _register(governance, demo_model, demo_onnx)
    for n in (1, 2):
        governance.approve(NAME, first, approver(n))
    governance.promote(NAME, first, ADMIN)
    unpromoted = _register(governance, demo_model, demo_onnx)
    with pytest.raises(InvalidInput, match="never promoted"):
        governance.rollback(NAME, ADMIN, unpromoted)


def test_override_rate_of_the_replaced_version_is_a_criterion(
    governance: ModelGovernance,
    demo_model: DemoModel,
    demo_onnx: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    first = _register(governance, demo_model, demo_onnx)
    for n in (1, 2):
        governance.approve(NAME, first, approver(n))
    governance.promote(NAME, first, ADMIN)
    second = _register(governance, demo_model, demo_onnx)
    for n in (1, 2):
        governance.approve(NAME, second, approver(n))
    monkeypatch.setattr(
        ModelGovernance,
        "_decisions",
        staticmethod(lambda *_: {"approve": 10, "override": 5, "reject": 10}),
    )
    with pytest.raises(PromotionRefused) as refused:
        governance.promote(NAME, second, ADMIN)
    failing = [c for c in refused.value.criteria if not c.passed]
    assert [c.name for c in failing] == ["max_override_rate_of_replaced_version"]
    assert "0.600 of 25 decisions" in failing[0].detail


def test_a_model_file_changed_after_registration_fails_the_gate(
    governance: ModelGovernance, registry: ModelRegistry, demo_model: DemoModel, demo_onnx: Path
) -> None:
    version = _register(governance, demo_model, demo_onnx)
    for n in (1, 2):
        governance.approve(NAME, version, approver(n))
    path = registry.verify(NAME, version).local_path
    path.write_bytes(path.read_bytes() + b"\0")
    with pytest.raises(PromotionRefused) as refused:
        governance.promote(NAME, version, ADMIN)
    assert [c.name for c in refused.value.criteria if not c.passed] == ["onnx-sha256"]
