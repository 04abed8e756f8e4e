"""`hitl-gateway model ...`: register, approve, promote, list, show and roll back model versions.

Identity comes from a bearer token of the configured issuer (`--token`, or `-` to read it from
standard input), validated exactly as the HTTP edge validates it. Exit codes: 0 done, 1 refused
(the reasons are printed), 2 bad input.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from gateway.settings import Settings

STDIN_MARK = "-"  # `--token -` reads the token from standard input


def _actor(args: argparse.Namespace, settings: Settings) -> Any:
    from gateway.auth.tokens import TokenValidator

    read_stdin = args.token == STDIN_MARK
    token = sys.stdin.readline().strip() if read_stdin else str(args.token)
    return TokenValidator(settings).validate(token).actor


def _governance(settings: Settings) -> Any:
    from gateway.persistence.db import make_engine
    from scoring.governance import ModelGovernance
    from scoring.registry import ModelRegistry

    return ModelGovernance(
        ModelRegistry(settings.mlflow_tracking_uri),
        make_engine(settings.database_url),
        alias=settings.mlflow.alias,
    )


def _run(args: argparse.Namespace, settings: Settings) -> int:
    import scoring  # noqa: F401  (telemetry off before MLflow loads)
    from gateway.domain.errors import GatewayError
    from scoring.governance import PromotionRefused

    try:
        result: int = args.action(args, settings)
        return result
    except PromotionRefused as refused:
        print(refused.message, file=sys.stderr)
        for criterion in refused.criteria:
            print(f"  {criterion.line()}", file=sys.stderr)
        return 1
    except GatewayError as exc:
        print(f"hitl-gateway model: {exc.code}: {exc.message}", file=sys.stderr)
        return 1 if exc.code in {"business-rule", "forbidden", "login", "duplicate"} else 2


def _register(args: argparse.Namespace, settings: Settings) -> int:
    from gateway.domain.errors import InvalidInput
    from scoring.contract import InputContract

    contract = InputContract.from_json(Path(args.contract).read_text(encoding="utf-8"))
    metrics = json.loads(Path(args.metrics).read_text(encoding="utf-8"))
    if not isinstance(metrics, dict) or not all(
        isinstance(v, int | float) for v in metrics.values()
    ):
        raise InvalidInput("--metrics must be a JSON object of numbers")
    artifacts = {Path(p).name: Path(p).read_text(encoding="utf-8") for p in args.artifact}
    tags: dict[str, str] = {}
    if args.validation_reference:
        from scoring.monitoring import REFERENCE_TAG, ValidationReference

        text = Path(args.validation_reference).read_text(encoding="utf-8")
        tags[REFERENCE_TAG] = ValidationReference.from_json(text).to_json()
    identity = _governance(settings).register(
        args.name,
        Path(args.onnx),
        contract,
        {str(k): float(v) for k, v in metrics.items()},
        Path(args.model_card).read_text(encoding="utf-8"),
        _actor(args, settings),
        artifacts=artifacts,
        tags=tags,
    )
    print(f"registered {identity.name} version {identity.version} sha256 {identity.sha256}")
    return 0


def _approve(args: argparse.Namespace, settings: Settings) -> int:
    approval = _governance(settings).approve(args.name, args.version, _actor(args, settings))
    print(f"approved {args.name} version {args.version} by {approval.approver}")
    return 0


def _promote(args: argparse.Namespace, settings: Settings) -> int:
    report = _governance(settings).promote(args.name, args.version, _actor(args, settings))
    print(f"promoted {args.name} version {args.version} to alias '{settings.mlflow.alias}'")
    for criterion in report.criteria:
        print(f"  {criterion.line()}")
    return 0


def _rollback(args: argparse.Namespace, settings: Settings) -> int:
    identity = _governance(settings).rollback(args.name, _actor(args, settings), args.to)
    print(f"rolled back {identity.name} to version {identity.version}")
    return 0


def _list(args: argparse.Namespace, settings: Settings) -> int:
    from scoring.governance import APPROVAL_PREFIX, PROMOTED_AT

    governance = _governance(settings)
    for info in governance.registry.versions(args.name):
        approvals = sum(1 for k in info.tags if k.startswith(APPROVAL_PREFIX))
        print(
            f"{info.name}\t{info.version}\t{info.tags.get('onnx_sha256', '')[:16]}\t"
            f"aliases={','.join(info.aliases) or '-'}\tapprovals={approvals}\t"
            f"promoted_at={info.tags.get(PROMOTED_AT, '-')}"
        )
    return 0


def _show(args: argparse.Namespace, settings: Settings) -> int:
    from scoring.registry import MODEL_CARD_FILE

    governance = _governance(settings)
    card = governance.registry.artifact_text(args.name, args.version, MODEL_CARD_FILE)
    print(card or "(no model card)")
    report = governance.evaluate(args.name, args.version)
    verdict = "passes" if report.passed else "fails"
    print(f"## Promotion gate ({Path(report.policy.source).name}): {verdict}")
    for criterion in report.criteria:
        print(f"- {criterion.line()}")
    return 0


def register(sub: Any) -> None:
    """Add the `model` command group."""
    model = sub.add_parser("model", help="model governance (registry, promotion gate)")
    group = model.add_subparsers(dest="model_cmd", required=True)

    def command(name: str, help_text: str, action: Any, *, token: bool = True) -> Any:
        parser = group.add_parser(name, help=help_text)
        parser.add_argument("--name", required=True, help="registered model name")
        if token:
            parser.add_argument(
                "--token", required=True, help="bearer token of the acting person ('-': stdin)"
            )
        parser.set_defaults(func=_run, action=action)
        return parser

    reg = command("register", "register an ONNX version with its contract and evidence", _register)
    reg.add_argument("--onnx", required=True, help="the ONNX model file")
    reg.add_argument("--contract", required=True, help="input contract JSON")
    reg.add_argument("--metrics", required=True, help="JSON object of evaluation metrics")
    reg.add_argument("--model-card", required=True, help="model card (markdown)")
    reg.add_argument(
        "--artifact", action="append", default=[], help="evaluation document (repeatable)"
    )
    reg.add_argument(
        "--validation-reference",
        help="JSON from scoring.monitoring.reference_from (held-out scores and input means)",
    )
    command("approve", "approve a version (model-approver role)", _approve).add_argument(
        "--version", required=True
    )
    command("promote", "evaluate the policy and move the alias", _promote).add_argument(
        "--version", required=True
    )
    command("rollback", "serve the previously promoted version", _rollback).add_argument(
        "--to", help="version to return to (default: the latest earlier promotion)"
    )
    command("list", "list versions, aliases and approvals", _list, token=False)
    command("show", "model card and promotion gate results", _show, token=False).add_argument(
        "--version", required=True
    )
