"""Promotion gate policy-as-code: one TOML file per use case, evaluated against evidence.

A policy names the metrics a version must reach at the review threshold, the artifacts its run
must carry, how often reviewers may have contradicted the version being replaced, and how many
distinct people holding the approver role must have approved it. `evaluate` checks every
criterion and returns all of them, so a refusal lists every failing one at once.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.domain.errors import InvalidInput

POLICY_DIR = Path(__file__).resolve().parent / "policies"
METRIC_KEYS = {
    "min_auroc": "auroc",
    "min_precision_at_review_threshold": "precision_at_review_threshold",
    "min_sensitivity_at_review_threshold": "sensitivity_at_review_threshold",
}


@dataclass(frozen=True, slots=True)
class PromotionPolicy:
    """The criteria a version of one use case must meet before it is served."""

    use_case: str
    registered_model: str
    review_threshold: float
    min_metrics: Mapping[str, float]
    max_override_rate: float
    min_decisions_for_override_rate: int
    override_decisions: tuple[str, ...]
    required_artifacts: tuple[str, ...]
    distinct_approvers: int
    approver_role: str
    source: str = ""

    def __post_init__(self) -> None:
        problems: list[str] = []
        if not self.use_case or not self.registered_model:
            problems.append("use_case and registered_model are required")
        if not 0.0 < self.review_threshold <= 1.0:
            problems.append("review_threshold must be in (0, 1]")
        for key, value in self.min_metrics.items():
            if not 0.0 <= value <= 1.0:
                problems.append(f"{key} must be in [0, 1]")
        if not 0.0 <= self.max_override_rate <= 1.0:
            problems.append("max_override_rate_of_replaced_version must be in [0, 1]")
        if self.distinct_approvers < 1:
            problems.append("distinct_approvers must be at least 1")
        if not self.approver_role:
            problems.append("approvals.role is required")
        if problems:
            raise InvalidInput(f"invalid promotion policy {self.source}: " + "; ".join(problems))


def _table(data: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, Mapping):
        raise InvalidInput(f"[{key}] must be a table")
    return value


def parse_policy(text: str, source: str = "<policy>") -> PromotionPolicy:
    """Parse and validate a policy document."""
    try:
        data = tomllib.loads(text)
        metrics = _table(data, "metrics")
        production = _table(data, "production")
        artifacts = _table(data, "artifacts")
        approvals = _table(data, "approvals")
        unknown = set(metrics) - set(METRIC_KEYS)
        if unknown:
            raise InvalidInput(f"{source}: unknown metric criteria {sorted(unknown)}")
        return PromotionPolicy(
            use_case=str(data["use_case"]),
            registered_model=str(data.get("registered_model", data["use_case"])),
            review_threshold=float(data["review_threshold"]),
            min_metrics={k: float(v) for k, v in metrics.items()},
            max_override_rate=float(production.get("max_override_rate_of_replaced_version", 1.0)),
            min_decisions_for_override_rate=int(
                production.get("min_decisions_for_override_rate", 1)
            ),
            override_decisions=tuple(
                str(d) for d in production.get("override_decisions", ("override", "reject"))
            ),
            required_artifacts=tuple(str(a) for a in artifacts.get("required", ())),
            distinct_approvers=int(approvals.get("distinct_approvers", 1)),
            approver_role=str(approvals.get("role", "model-approver")),
            source=source,
        )
    except tomllib.TOMLDecodeError as exc:
        raise InvalidInput(f"{source} is not TOML: {exc}") from exc
    except KeyError as exc:
        raise InvalidInput(f"{source} lacks {exc.args[0]!r}") from exc
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"{source}: {exc}") from exc


def load_policy(use_case: str, policy_dir: Path | None = None) -> PromotionPolicy:
    """The policy file `<use_case>.toml` from `policy_dir` (default: the shipped policies)."""
    path = (policy_dir or POLICY_DIR) / f"{use_case}.toml"
    if not path.is_file():
        raise InvalidInput(f"no promotion policy for use case {use_case!r} at {path}")
    policy = parse_policy(path.read_text(encoding="utf-8"), str(path))
    if policy.use_case != use_case:
        raise InvalidInput(f"{path} declares use case {policy.use_case!r}, not {use_case!r}")
    return policy


@dataclass(frozen=True, slots=True)
class Approval:
    """One recorded approval of a version."""

    approver: str
    roles: tuple[str, ...]
    sha256: str
    audited: bool


@dataclass(frozen=True, slots=True)
class Evidence:
    """What the gate knows about the candidate version and the one it would replace."""

    name: str
    version: str
    sha256: str
    use_case: str
    metrics: Mapping[str, float]
    artifacts: frozenset[str]
    approvals: Sequence[Approval]
    replaced_version: str | None = None
    replaced_decisions: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Criterion:
    """One evaluated criterion: its name, whether it holds, and what was found."""

    name: str
    passed: bool
    detail: str

    def line(self) -> str:
        """`PASS|FAIL name: detail`."""
        return f"{'PASS' if self.passed else 'FAIL'} {self.name}: {self.detail}"


def override_rate(decisions: Mapping[str, int], counted: Sequence[str]) -> tuple[float, int]:
    """(share of decisions in `counted`, total decisions)."""
    total = sum(decisions.values())
    if total == 0:
        return 0.0, 0
    return sum(decisions.get(d, 0) for d in counted) / total, total


def evaluate(policy: PromotionPolicy, evidence: Evidence) -> list[Criterion]:
    """Every criterion of the policy, evaluated; the version may be promoted if all pass."""
    results = [
        Criterion(
            "use-case",
            evidence.use_case == policy.use_case,
            f"version serves {evidence.use_case!r}, policy is for {policy.use_case!r}",
        )
    ]
    logged_threshold = evidence.metrics.get("review_threshold")
    results.append(
        Criterion(
            "review-threshold",
            logged_threshold is not None
            and math.isclose(logged_threshold, policy.review_threshold, abs_tol=1e-9),
            f"metrics logged at threshold {logged_threshold}, policy threshold "
            f"{policy.review_threshold:g}",
        )
    )
    for key, minimum in policy.min_metrics.items():
        metric = METRIC_KEYS[key]
        value = evidence.metrics.get(metric)
        passed = value is not None and math.isfinite(value) and value >= minimum
        shown = "not logged" if value is None else f"{value:.4f}"
        results.append(Criterion(key, passed, f"{metric} {shown}, minimum {minimum:g}"))
    for artifact in policy.required_artifacts:
        present = artifact in evidence.artifacts
        results.append(
            Criterion(
                f"artifact:{artifact}",
                present,
                "present in the version's run" if present else "missing from the version's run",
            )
        )
    results.append(_override_criterion(policy, evidence))
    results.extend(_approval_criteria(policy, evidence))
    return results


def _override_criterion(policy: PromotionPolicy, evidence: Evidence) -> Criterion:
    name = "max_override_rate_of_replaced_version"
    if evidence.replaced_version is None:
        return Criterion(name, True, "no version is being replaced")
    rate, total = override_rate(evidence.replaced_decisions, policy.override_decisions)
    where = f"version {evidence.replaced_version}"
    if total < policy.min_decisions_for_override_rate:
        return Criterion(
            name,
            True,
            f"{where} has {total} review decisions, fewer than the "
            f"{policy.min_decisions_for_override_rate} needed to measure a rate",
        )
    return Criterion(
        name,
        rate <= policy.max_override_rate,
        f"{where}: {rate:.3f} of {total} decisions were {'/'.join(policy.override_decisions)}, "
        f"maximum {policy.max_override_rate:g}",
    )


def _approval_criteria(policy: PromotionPolicy, evidence: Evidence) -> list[Criterion]:
    results: list[Criterion] = []
    counted: set[str] = set()
    for approval in evidence.approvals:
        who = approval.approver
        if approval.sha256 != evidence.sha256:
            results.append(Criterion(f"approval:{who}", False, "approved other model bytes"))
        elif policy.approver_role not in approval.roles:
            results.append(
                Criterion(
                    f"approval:{who}",
                    False,
                    f"{who} does not hold the {policy.approver_role} role "
                    f"(roles: {', '.join(approval.roles) or 'none'})",
                )
            )
        elif not approval.audited:
            results.append(
                Criterion(f"approval:{who}", False, "no matching record in the audit trail")
            )
        else:
            counted.add(who)
    results.append(
        Criterion(
            "distinct_approvers",
            len(counted) >= policy.distinct_approvers,
            f"{len(counted)} valid approval(s) by distinct {policy.approver_role}s "
            f"({', '.join(sorted(counted)) or 'none'}), {policy.distinct_approvers} required",
        )
    )
    return results
