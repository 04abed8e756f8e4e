"""`hitl-gateway audit ...`: verify the hash-chained audit trail."""

from __future__ import annotations

import argparse
from typing import Any

from gateway.settings import Settings


def _verify(_args: argparse.Namespace, settings: Settings) -> int:
    from gateway.audit.verify import format_report, verify_chain
    from gateway.persistence.db import make_engine

    engine = make_engine(settings.database_url)
    try:
        report = verify_chain(engine)
    finally:
        engine.dispose()
    print(format_report(report))
    return 0 if report.ok else 1


def register(sub: Any) -> None:
    """Add the `audit` command group."""
    audit = sub.add_parser("audit", help="audit trail").add_subparsers(
        dest="audit_cmd", required=True
    )
    audit.add_parser(
        "verify", help="check the hash chain; exits non-zero naming the first bad record"
    ).set_defaults(func=_verify)
