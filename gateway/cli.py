"""The `hitl-gateway` command line: serve, migrate, tokens, audit, demo data."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import gateway  # noqa: F401  (switches dependency telemetry off before anything else loads)
from gateway.auth.issuer import ROLES
from gateway.commands import COMMAND_MODULES
from gateway.settings import Settings, SettingsError, describe_settings, load_settings

Command = Callable[[argparse.Namespace, Settings], int]


def _cmd_serve(_args: argparse.Namespace, settings: Settings) -> int:
    from gateway.app import serve

    asyncio.run(serve(settings))
    return 0


def _cmd_db_upgrade(_args: argparse.Namespace, settings: Settings) -> int:
    from gateway.persistence.db import make_engine
    from gateway.persistence.migrate import current_revision, upgrade

    settings.storage.data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.database_url)
    upgrade(engine)
    print(f"database at revision {current_revision(engine)}")
    engine.dispose()
    return 0


def _cmd_token(args: argparse.Namespace, settings: Settings) -> int:
    from gateway.auth.tokens import mint_token

    scopes = tuple(args.scope) if args.scope else None
    print(
        mint_token(
            settings,
            role=args.role,
            user=args.user,
            scopes=scopes,
            lifetime=args.lifetime or settings.auth.token_lifetime_seconds,
            patient=args.patient or "",
        )
    )
    return 0


def _cmd_demo_setup(_args: argparse.Namespace, settings: Settings) -> int:
    import scoring  # noqa: F401  (telemetry off before MLflow loads)
    from scoring.demo_setup import setup_demo

    (settings.storage.data_dir / "mlflow").mkdir(parents=True, exist_ok=True)
    for model in setup_demo(settings):
        print(
            f"model {model.name} version {model.version} (sha256 {model.sha256}) "
            f"is under alias '{settings.mlflow.alias}'"
        )
    return 0


def _cmd_demo_send(args: argparse.Namespace, settings: Settings) -> int:
    from gateway.demo_sender import send_demo_studies

    host = args.host
    port = args.port or settings.dicom.port
    ae = args.called_ae or settings.dicom.ae_title
    results = send_demo_studies(
        host=host, port=port, called_ae=ae, positives=args.positive, negatives=args.negative
    )
    for line in results:
        print(line)
    return 0 if all(" 0x0000 " in f" {line} " for line in results) else 1


def _cmd_config_show(_args: argparse.Namespace, _settings: Settings) -> int:
    for env, type_name, default, doc in describe_settings():
        print(f"{env}\t{type_name}\t{default}\t{doc}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every sub-command."""
    parser = argparse.ArgumentParser(
        prog="hitl-gateway",
        description="Governed human-in-the-loop gateway for imaging-triage AI.",
    )
    parser.add_argument("--config", type=Path, help="TOML configuration file")
    parser.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("serve", help="run the gateway (DICOM, HTTP, pipeline)").set_defaults(
        func=_cmd_serve
    )

    db = sub.add_parser("db", help="database schema").add_subparsers(dest="db_cmd", required=True)
    db.add_parser("upgrade", help="migrate the database to the newest schema").set_defaults(
        func=_cmd_db_upgrade
    )

    token = sub.add_parser("token", help="mint a development bearer token (embedded issuer)")
    token.add_argument(
        "--role",
        required=True,
        choices=ROLES,
    )
    token.add_argument("--user", required=True, help="fhirUser, e.g. Practitioner/123")
    token.add_argument(
        "--scope", action="append", help="SMART v2 scope (repeatable); default per role"
    )
    token.add_argument("--lifetime", type=int, help="seconds until the token expires")
    token.add_argument(
        "--patient", help="SMART launch patient (patient/ scopes reach only this patient)"
    )
    token.set_defaults(func=_cmd_token)

    for module in COMMAND_MODULES:
        importlib.import_module(module).register(sub)

    demo = sub.add_parser("demo", help="demo models and data").add_subparsers(
        dest="demo_cmd", required=True
    )
    demo.add_parser(
        "setup", help="build, register and promote the demo model (idempotent)"
    ).set_defaults(func=_cmd_demo_setup)
    send = demo.add_parser("send", help="send synthetic chest X-ray studies over DICOM")
    send.add_argument("--host", default="127.0.0.1")
    send.add_argument("--port", type=int, default=0, help="default: the configured DICOM port")
    send.add_argument("--called-ae", default="", help="default: the configured AE title")
    send.add_argument("--positive", type=int, default=1, help="studies with a finding")
    send.add_argument("--negative", type=int, default=1, help="studies without a finding")
    send.set_defaults(func=_cmd_demo_send)

    config = sub.add_parser("config", help="configuration").add_subparsers(
        dest="config_cmd", required=True
    )
    config.add_parser("show", help="list every setting with its variable name").set_defaults(
        func=_cmd_config_show
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    # Alembic announces every plugin at INFO; operators need only its warnings.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    try:
        settings = load_settings(args.config)
    except (SettingsError, OSError) as exc:
        print(f"hitl-gateway: configuration error: {exc}", file=sys.stderr)
        return 2
    func: Command = args.func
    return func(args, settings)


if __name__ == "__main__":
    sys.exit(main())
