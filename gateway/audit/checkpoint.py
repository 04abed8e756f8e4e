"""Signed checkpoints of the audit chain: every N records or T seconds, on rotation and on purge.

A checkpoint signs, with the active Ed25519 key, the payload
`{"type": "audit-checkpoint", "number", "seq", "hash", "kind", "signedAt", "keyId", "previous",
"retained"}` where `hash` is the chain hash at `seq`, `previous` the SHA-256 of the previous
checkpoint's JWS (so checkpoints form their own chain) and `retained` the digest of the records a
purge kept below its bridge (empty otherwise). Someone who rewrites records and recomputes every
hash up to the head still cannot produce a signature over the new hash at a checkpointed `seq`.
Each checkpoint is also recorded in the chain as an AuditEvent.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, Row, func, insert, select, update

from gateway.audit.activity import activity_event
from gateway.audit.signing import AuditKeyring, keys_dir_for
from gateway.audit.trail import HEAD_ID, AuditTrailError, append
from gateway.persistence.tables import audit_checkpoint, audit_head
from gateway.settings import Settings

log = logging.getLogger(__name__)

KINDS = frozenset({"periodic", "rotation", "purge-bridge", "manual"})


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """One stored checkpoint."""

    number: int
    seq: int
    hash: str
    kind: str
    key_id: str
    signed_at: datetime
    retained: str
    jws: str


@dataclass(frozen=True, slots=True)
class CheckpointPolicy:
    """When a periodic checkpoint is due: after `every_records` records or `every_seconds`."""

    every_records: int = 1000
    every_seconds: float = 300.0


def retained_digest(pairs: Iterable[tuple[int, str]]) -> str:
    """SHA-256 over `seq:hash` lines of the records a purge kept, in `seq` order."""
    digest = hashlib.sha256()
    for seq, record_hash in sorted(pairs):
        digest.update(f"{seq}:{record_hash}\n".encode("ascii"))
    return digest.hexdigest()


def jws_digest(jws: str) -> str:
    """What the next checkpoint's `previous` names: SHA-256 of this checkpoint's JWS."""
    return hashlib.sha256(jws.encode("ascii")).hexdigest()


def lock_head(conn: Connection) -> tuple[int, str]:
    """Take the head's row lock (as an append does) and return its (seq, hash)."""
    head = conn.execute(
        update(audit_head)
        .where(audit_head.c.id == HEAD_ID)
        .values(seq=audit_head.c.seq)
        .returning(audit_head.c.seq, audit_head.c.hash)
    ).one_or_none()
    if head is None:
        raise AuditTrailError("audit_head is missing: run the migration or ensure_head()")
    return int(head.seq), str(head.hash)


def latest(conn: Connection) -> Checkpoint | None:
    """The newest checkpoint, if any."""
    row = conn.execute(
        select(audit_checkpoint).order_by(audit_checkpoint.c.number.desc()).limit(1)
    ).one_or_none()
    return None if row is None else _from_row(row)


def all_checkpoints(conn: Connection) -> list[Checkpoint]:
    """Every checkpoint, oldest first."""
    rows = conn.execute(select(audit_checkpoint).order_by(audit_checkpoint.c.number)).all()
    return [_from_row(row) for row in rows]


def create_checkpoint(
    conn: Connection,
    keyring: AuditKeyring,
    kind: str,
    *,
    at: tuple[int, str] | None = None,
    retained: str = "",
    now: datetime | None = None,
) -> Checkpoint:
    """Sign the head (or `at` = (seq, hash)) and record it, in the caller's transaction."""
    if kind not in KINDS:
        raise ValueError(f"checkpoint kind {kind!r} is not one of {sorted(KINDS)}")
    head_seq, head_hash = lock_head(conn)
    seq, chain_hash = at if at is not None else (head_seq, head_hash)
    previous = latest(conn)
    key = keyring.active()
    signed_at = (now or datetime.now(UTC)).astimezone(UTC)
    number = 1 if previous is None else previous.number + 1
    payload = {
        "type": "audit-checkpoint",
        "number": number,
        "seq": seq,
        "hash": chain_hash,
        "kind": kind,
        "signedAt": signed_at.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "keyId": key.key_id,
        "previous": "" if previous is None else jws_digest(previous.jws),
        "retained": retained,
    }
    jws = key.sign_jws(payload)
    conn.execute(
        insert(audit_checkpoint).values(
            number=number,
            seq=seq,
            hash=chain_hash,
            kind=kind,
            signed_at=signed_at,
            key_id=key.key_id,
            retained=retained,
            jws=jws,
        )
    )
    append(
        conn,
        "AuditEvent",
        activity_event(
            "checkpoint-signed",
            when=signed_at,
            detail={
                "checkpoint-number": str(number),
                "checkpoint-seq": str(seq),
                "checkpoint-kind": kind,
                "key-id": key.key_id,
            },
        ),
    )
    return Checkpoint(number, seq, chain_hash, kind, key.key_id, signed_at, retained, jws)


def checkpoint_if_due(
    engine: Engine,
    keyring: AuditKeyring,
    policy: CheckpointPolicy,
    now: datetime | None = None,
) -> Checkpoint | None:
    """Sign a periodic checkpoint when enough records or time have passed since the last one."""
    moment = now or datetime.now(UTC)
    with engine.connect() as conn:
        last = latest(conn)
        head_seq = conn.execute(
            select(audit_head.c.seq).where(audit_head.c.id == HEAD_ID)
        ).scalar_one_or_none()
    if head_seq is None:
        return None
    # The checkpoint's own AuditEvent is one record; it alone does not make another due.
    since = int(head_seq) - (last.seq + 1 if last else 0)
    if since <= 0:
        return None
    overdue = last is None or moment - last.signed_at >= timedelta(seconds=policy.every_seconds)
    if since < policy.every_records and not overdue:
        return None
    with engine.begin() as conn:
        return create_checkpoint(conn, keyring, "periodic", now=moment)


def rotate_key(engine: Engine, keyring: AuditKeyring) -> tuple[str, str]:
    """Close the old key's period with a checkpoint, switch keys, and open the new one's."""
    with engine.begin() as conn:
        old = create_checkpoint(conn, keyring, "rotation").key_id
        new = keyring.rotate().key_id
        create_checkpoint(conn, keyring, "rotation")
    return old, new


async def run_checkpointer(
    engine: Engine,
    keyring: AuditKeyring,
    policy: CheckpointPolicy,
    stop: asyncio.Event,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> None:
    """Sign periodic checkpoints until `stop` is set (a pipeline worker of `serve`)."""
    interval = max(0.5, min(policy.every_seconds, 5.0))
    while not stop.is_set():
        try:
            await asyncio.to_thread(checkpoint_if_due, engine, keyring, policy, clock())
        except Exception:  # the checkpointer must outlive a passing database failure
            log.exception("audit checkpoint failed; retrying in %.1f s", interval)
        try:
            await asyncio.wait_for(stop.wait(), interval)
        except TimeoutError:
            continue


def count(conn: Connection) -> int:
    """How many checkpoints exist."""
    return int(conn.execute(select(func.count()).select_from(audit_checkpoint)).scalar_one())


def _from_row(row: Row[Any]) -> Checkpoint:
    return Checkpoint(
        number=int(row.number),
        seq=int(row.seq),
        hash=str(row.hash),
        kind=str(row.kind),
        key_id=str(row.key_id),
        signed_at=row.signed_at,
        retained=str(row.retained),
        jws=str(row.jws),
    )


def checkpointer(
    engine: Engine, settings: Settings, stop: asyncio.Event
) -> Coroutine[Any, Any, None]:
    """The periodic-checkpoint worker of `serve`, configured from `settings.audit`."""
    keyring = AuditKeyring(keys_dir_for(settings.storage.data_dir, settings.audit.keys_dir))
    policy = CheckpointPolicy(
        settings.audit.checkpoint_every_records, settings.audit.checkpoint_every_seconds
    )
    return run_checkpointer(engine, keyring, policy, stop)
