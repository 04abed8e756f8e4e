"""`hitl-gateway reviewer|review|automation ...`: reviewer credentials, the overdue sweep and the
safety-committee decisions that switch automation on.
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime, timedelta
from typing import Any

from gateway.settings import Settings


def _instant(text: str) -> datetime:
    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _engine(settings: Settings) -> Any:
    from gateway.persistence.db import make_engine

    return make_engine(settings.database_url)


def _credential(args: argparse.Namespace, settings: Settings) -> int:
    from gateway.reviewer_credentials import grant

    now = datetime.now(UTC)
    until = _instant(args.valid_until) if args.valid_until else now + timedelta(days=args.days)
    engine = _engine(settings)
    try:
        with engine.begin() as conn:
            credential = grant(
                conn,
                practitioner=args.practitioner,
                roles=args.roles.split(","),
                valid_until=until,
                granted_by=args.granted_by,
                now=now,
            )
    finally:
        engine.dispose()
    print(
        f"{credential.practitioner}: {' '.join(credential.roles)} "
        f"until {credential.valid_until.isoformat()}"
    )
    return 0


def _list(_args: argparse.Namespace, settings: Settings) -> int:
    from gateway.reviewer_credentials import all_credentials

    engine = _engine(settings)
    now = datetime.now(UTC)
    try:
        with engine.connect() as conn:
            for c in all_credentials(conn):
                state = "current" if c.valid_until > now else "EXPIRED"
                print(
                    f"{c.practitioner}\t{' '.join(c.roles)}\t{c.valid_until.isoformat()}\t{state}"
                )
    finally:
        engine.dispose()
    return 0


def _sweep(_args: argparse.Namespace, settings: Settings) -> int:
    from gateway.review_sla import reassign_overdue

    engine = _engine(settings)
    try:
        moved = reassign_overdue(engine, settings)
    finally:
        engine.dispose()
    for task_id in moved:
        print(f"Task/{task_id} reassigned to {settings.review.backup_pool}")
    return 0


def _decide(args: argparse.Namespace, settings: Settings) -> int:
    from gateway.automation import SafetyDecision, record_decision

    decision = SafetyDecision(
        switch=args.switch,
        scope=args.scope,
        decided_by=args.decided_by,
        decided_at=_instant(args.decided_at),
        valid_until=_instant(args.valid_until),
        reference=args.reference,
    )
    engine = _engine(settings)
    try:
        with engine.begin() as conn:
            record_decision(conn, decision, recorded_by=args.recorded_by, now=datetime.now(UTC))
    finally:
        engine.dispose()
    print(f"{decision.switch} on for {decision.scope} until {decision.valid_until.isoformat()}")
    return 0


def _status(args: argparse.Namespace, settings: Settings) -> int:
    from gateway.automation import SWITCHES, switch_enabled

    engine = _engine(settings)
    try:
        with engine.connect() as conn:
            for switch in SWITCHES:
                on = switch_enabled(conn, switch, args.scope, datetime.now(UTC))
                print(f"{switch}\t{args.scope}\t{'on' if on else 'off'}")
    finally:
        engine.dispose()
    return 0


def register(sub: Any) -> None:
    """Add the `reviewer`, `review` and `automation` command groups."""
    reviewer = sub.add_parser("reviewer", help="reviewer credentials").add_subparsers(
        dest="reviewer_cmd", required=True
    )
    cred = reviewer.add_parser("credential", help="grant or renew a reviewer credential")
    cred.add_argument("--practitioner", required=True, help="e.g. Practitioner/dr-jones")
    cred.add_argument("--roles", default="reviewer", help="reviewer[,secondary-reviewer]")
    cred.add_argument("--valid-until", help="ISO 8601 instant the credential expires")
    cred.add_argument("--days", type=int, default=365, help="validity when --valid-until is unset")
    cred.add_argument("--granted-by", required=True, help="the admin granting it")
    cred.set_defaults(func=_credential)
    reviewer.add_parser("list", help="list credentials and their state").set_defaults(func=_list)

    review = sub.add_parser("review", help="review workflow").add_subparsers(
        dest="review_cmd", required=True
    )
    review.add_parser(
        "sweep", help="reassign review Tasks past their deadline to the backup pool"
    ).set_defaults(func=_sweep)

    automation = sub.add_parser("automation", help="automation switches").add_subparsers(
        dest="automation_cmd", required=True
    )
    decide = automation.add_parser("decide", help="record a safety-committee decision")
    decide.add_argument("--switch", required=True, help="e.g. auto-escalate")
    decide.add_argument("--scope", required=True, help="use case, or * for all")
    decide.add_argument("--decided-by", required=True, help="the committee and its chair")
    decide.add_argument("--decided-at", required=True, help="ISO 8601 instant of the decision")
    decide.add_argument("--valid-until", required=True, help="ISO 8601 instant it expires")
    decide.add_argument("--reference", required=True, help="minutes or decision document")
    decide.add_argument("--recorded-by", required=True, help="who enters the record")
    decide.set_defaults(func=_decide)
    status = automation.add_parser("status", help="which switches are on for a scope")
    status.add_argument("--scope", default="*")
    status.set_defaults(func=_status)
