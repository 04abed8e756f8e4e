"""`hitl-gateway audit ...`: verify the trail, sign checkpoints, rotate keys, export and check
audit packages, manage legal holds and purge past retention."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from gateway.settings import Settings

Command = Callable[[argparse.Namespace, Settings], int]


def _guard(command: Command) -> Command:
    """A refused request (past-retention rule, unknown hold, bad input) exits 2 with its reason."""

    def run(args: argparse.Namespace, settings: Settings) -> int:
        from gateway.domain.errors import GatewayError

        try:
            return command(args, settings)
        except GatewayError as exc:
            print(f"hitl-gateway: refused: {exc.message}", file=sys.stderr)
            return 2

    return run


def _when(text: str) -> datetime:
    """An ISO date (midnight UTC) or an ISO date-time with a zone."""
    try:
        if len(text) == 10:
            return datetime.combine(date.fromisoformat(text), datetime.min.time(), UTC)
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO date or date-time") from None
    if value.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r} needs a time zone (e.g. Z or +01:00)")
    return value


def _engine(settings: Settings) -> Any:
    from gateway.persistence.db import make_engine

    return make_engine(settings.database_url)


def _keyring(settings: Settings) -> Any:
    from gateway.audit.signing import AuditKeyring, keys_dir_for

    return AuditKeyring(keys_dir_for(settings.storage.data_dir, settings.audit.keys_dir))


def _actor(args: argparse.Namespace) -> Any:
    from gateway.domain.model import Actor

    return Actor(reference=args.by, display=args.by)


def _public_keys(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    from gateway.audit.signing import load_jwks

    if getattr(args, "public_key", None):
        return load_jwks(Path(args.public_key))
    jwks: dict[str, Any] = _keyring(settings).public_jwks()
    return jwks


def _verify(args: argparse.Namespace, settings: Settings) -> int:
    from gateway.audit.verify import format_report, verify_chain

    engine = _engine(settings)
    try:
        report = verify_chain(engine, public_keys=_public_keys(args, settings))
    finally:
        engine.dispose()
    print(format_report(report))
    return 0 if report.ok else 1


def _checkpoint(_args: argparse.Namespace, settings: Settings) -> int:
    from gateway.audit.checkpoint import create_checkpoint

    engine = _engine(settings)
    try:
        with engine.begin() as conn:
            cp = create_checkpoint(conn, _keyring(settings), "manual")
    finally:
        engine.dispose()
    print(f"checkpoint {cp.number} signed record {cp.seq} ({cp.hash}) with key {cp.key_id}")
    return 0


def _rotate(_args: argparse.Namespace, settings: Settings) -> int:
    from gateway.audit.checkpoint import rotate_key

    engine = _engine(settings)
    try:
        old, new = rotate_key(engine, _keyring(settings))
    finally:
        engine.dispose()
    print(f"audit signing key rotated: {old} -> {new} (both stay in the public key set)")
    return 0


def _public_key(args: argparse.Namespace, settings: Settings) -> int:
    text = json.dumps(_keyring(settings).public_jwks(), indent=2)
    if args.out:
        Path(args.out).write_text(text + "\n", encoding="utf-8")
    else:
        print(text)
    return 0


def _export(args: argparse.Namespace, settings: Settings) -> int:
    from gateway.audit.model_cards import RegistryModelCards
    from gateway.audit.package import ExportRequest, export_package

    engine = _engine(settings)
    request = ExportRequest(args.start, args.end, args.patient, args.mask_phi)
    try:
        manifest = export_package(
            engine,
            _keyring(settings),
            Path(args.out),
            request,
            actor=_actor(args),
            model_cards=RegistryModelCards(settings.mlflow_tracking_uri),
        )
    finally:
        engine.dispose()
    counts = ", ".join(f"{f['name']} {f['lines']}" for f in manifest["files"])
    print(f"audit package written to {args.out}: {counts}")
    return 0 if manifest["chain"]["ok"] else 1


def _verify_package(args: argparse.Namespace, _settings: Settings) -> int:
    from gateway.audit.package_verify import format_package_report, verify_package
    from gateway.audit.signing import load_jwks

    report = verify_package(Path(args.path), load_jwks(Path(args.public_key)))
    print(format_package_report(report))
    return 0 if report.ok else 1


def _purge(args: argparse.Namespace, settings: Settings) -> int:
    from gateway.audit.retention import purge

    engine = _engine(settings)
    try:
        result = purge(
            engine,
            _keyring(settings),
            before=args.before,
            retention_years=settings.audit.retention_years,
            actor=_actor(args),
        )
    finally:
        engine.dispose()
    print(
        f"purged {result.removed} records through record {result.through_seq}; "
        f"{result.kept_on_hold} kept on legal hold; bridge checkpoint {result.checkpoint_number}"
    )
    return 0


def _hold_add(args: argparse.Namespace, settings: Settings) -> int:
    from gateway.audit.retention import place_hold

    engine = _engine(settings)
    try:
        hold = place_hold(
            engine,
            actor=_actor(args),
            reason=args.reason,
            patient_id=args.patient or "",
            period_start=args.start,
            period_end=args.end,
        )
    finally:
        engine.dispose()
    print(hold.id)
    return 0


def _hold_release(args: argparse.Namespace, settings: Settings) -> int:
    from gateway.audit.retention import release_hold

    engine = _engine(settings)
    try:
        release_hold(engine, args.id, actor=_actor(args))
    finally:
        engine.dispose()
    print(f"legal hold {args.id} released")
    return 0


def _hold_list(_args: argparse.Namespace, settings: Settings) -> int:
    from gateway.audit.retention import list_holds

    engine = _engine(settings)
    try:
        holds = list_holds(engine)
    finally:
        engine.dispose()
    for h in holds:
        period = f"{h.period_start or '-'}..{h.period_end or '-'}"
        sys.stdout.write(f"{h.id}\tpatient={h.patient_id or '-'}\tperiod={period}\t{h.reason}\n")
    return 0


def register(sub: Any) -> None:
    """Add the `audit` command group."""
    audit = sub.add_parser("audit", help="audit trail").add_subparsers(
        dest="audit_cmd", required=True
    )
    verify = audit.add_parser(
        "verify", help="check chain and signed checkpoints; exits non-zero naming the first bad"
    )
    verify.add_argument("--public-key", help="JWKS file (default: the local key set)")
    verify.set_defaults(func=_guard(_verify))
    audit.add_parser("checkpoint", help="sign a checkpoint of the chain now").set_defaults(
        func=_guard(_checkpoint)
    )
    audit.add_parser(
        "rotate-key", help="switch to a new Ed25519 signing key (old keys stay verifiable)"
    ).set_defaults(func=_guard(_rotate))
    public = audit.add_parser("public-key", help="print or write the public key set (JWKS)")
    public.add_argument("out", nargs="?", help="file to write instead of printing")
    public.set_defaults(func=_guard(_public_key))

    export = audit.add_parser("export", help="write a signed audit package for a period")
    export.add_argument("--from", dest="start", type=_when, required=True)
    export.add_argument("--to", dest="end", type=_when, required=True)
    export.add_argument("--patient", help="only records about this patient id")
    export.add_argument("--mask-phi", action="store_true", help="pseudonymise patient ids")
    export.add_argument("--by", default="Device/hitl-gateway-cli", help="who exports")
    export.add_argument("out", help="directory to create (must be new or empty)")
    export.set_defaults(func=_guard(_export))
    check = audit.add_parser("verify-package", help="check an audit package offline")
    check.add_argument("path")
    check.add_argument("--public-key", required=True, help="JWKS file of the audit signing keys")
    check.set_defaults(func=_guard(_verify_package))

    purge = audit.add_parser("purge", help="remove records past retention and not on hold")
    purge.add_argument("--before", type=_when, required=True)
    purge.add_argument("--by", required=True, help="who purges, e.g. Practitioner/123")
    purge.set_defaults(func=_guard(_purge))
    hold = audit.add_parser("hold", help="legal holds").add_subparsers(
        dest="hold_cmd", required=True
    )
    add = hold.add_parser("add", help="place a legal hold by patient and/or period")
    add.add_argument("--patient")
    add.add_argument("--from", dest="start", type=_when)
    add.add_argument("--to", dest="end", type=_when)
    add.add_argument("--reason", required=True)
    add.add_argument("--by", required=True)
    add.set_defaults(func=_guard(_hold_add))
    release = hold.add_parser("release", help="release a legal hold")
    release.add_argument("id")
    release.add_argument("--by", required=True)
    release.set_defaults(func=_guard(_hold_release))
    hold.add_parser("list", help="active legal holds").set_defaults(func=_guard(_hold_list))
