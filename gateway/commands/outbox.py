"""`hitl-gateway outbox list|show|replay`: inspect worklist changes and replay dead letters."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from gateway.settings import Settings

STATES = ("pending", "delivered", "dead")
CLI_ACTOR = "Device/hitl-gateway-cli"


def _engine(settings: Settings) -> Any:
    from gateway.persistence.db import make_engine

    return make_engine(settings.database_url)


def _list(args: argparse.Namespace, settings: Settings) -> int:
    from gateway.outbox import list_rows

    engine = _engine(settings)
    try:
        rows = list_rows(engine, args.state, limit=args.limit)
    finally:
        engine.dispose()
    print("id\tstate\tdestination\tattempts\tnext_attempt_at\tstudy\tidempotency_key\tlast_error")
    for r in rows:
        error = r.last_error.replace("\t", " ").replace("\n", " ")[:120]
        print(
            f"{r.id}\t{r.state}\t{r.destination}\t{r.attempts}\t"
            f"{r.next_attempt_at.isoformat()}\t{r.study_instance_uid}\t{r.idempotency_key}\t{error}"
        )
    return 0


def _show(args: argparse.Namespace, settings: Settings) -> int:
    from gateway.outbox import get_row

    engine = _engine(settings)
    try:
        row = get_row(engine, args.id)
    finally:
        engine.dispose()
    if row is None:
        print(f"outbox row {args.id} does not exist", file=sys.stderr)
        return 2
    document: dict[str, Any] = {
        "id": row.id,
        "state": row.state,
        "destination": row.destination,
        "kind": row.kind,
        "idempotency_key": row.idempotency_key,
        "study_instance_uid": row.study_instance_uid,
        "attempts": row.attempts,
        "next_attempt_at": row.next_attempt_at.isoformat(),
        "created_at": row.created_at.isoformat(),
        "delivered_at": row.delivered_at.isoformat() if row.delivered_at else None,
        "last_error": row.last_error,
    }
    try:
        document["payload"] = json.loads(row.payload)
    except ValueError:
        document["payload"] = row.payload
    print(json.dumps(document, indent=2, ensure_ascii=False))
    return 0


def _replay(args: argparse.Namespace, settings: Settings) -> int:
    from gateway.domain.errors import GatewayError
    from gateway.domain.model import Actor
    from gateway.outbox import replay

    engine = _engine(settings)
    try:
        replay(
            engine, args.id, actor=Actor(reference=args.by, display="operator"), force=args.force
        )
    except GatewayError as exc:
        print(f"refused ({exc.code}): {exc.message}", file=sys.stderr)
        return 2 if exc.code == "not-found" else 1
    finally:
        engine.dispose()
    print(f"outbox row {args.id} is pending again and will be delivered")
    return 0


def register(sub: Any) -> None:
    """Add the `outbox` command group."""
    outbox = sub.add_parser("outbox", help="worklist outbox: list, show, replay dead letters")
    commands = outbox.add_subparsers(dest="outbox_cmd", required=True)
    listing = commands.add_parser("list", help="rows in queue order (tab-separated)")
    listing.add_argument("--state", choices=STATES, help="only rows in this state")
    listing.add_argument("--limit", type=int, default=None, help="at most this many rows")
    listing.set_defaults(func=_list)
    show = commands.add_parser("show", help="one row as JSON, with its payload")
    show.add_argument("id", type=int)
    show.set_defaults(func=_show)
    again = commands.add_parser("replay", help="put a dead letter back in the queue")
    again.add_argument("id", type=int)
    again.add_argument(
        "--force", action="store_true", help="replay even if a newer change for the study exists"
    )
    again.add_argument(
        "--by", default=CLI_ACTOR, help="who replays, audited (e.g. Practitioner/123)"
    )
    again.set_defaults(func=_replay)
