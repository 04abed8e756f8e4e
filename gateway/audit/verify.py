"""Verification of the audit chain defined in `gateway.audit.trail`, its signed checkpoints and
the purge bridge that lets a chain verify after a retention purge.

The head, the highest stored `seq`, the checkpoints and the latest purge are read first; records
committed while the walk runs lie beyond the head read and are outside the verified range. Then:

1. Checkpoints: numbered 1..n without gaps, each naming the SHA-256 of the previous one's JWS,
   each signature verifying with a key of the public JWKS, the payload agreeing with the row.
2. Purge bridge: the records a purge kept below it (legal holds) must each hash correctly and
   together match the digest the bridge checkpoint signed; the walk starts after the bridge, from
   the hash it signed.
3. The walk: records in `seq` order, in batches by key, stopping at the first failing record. A
   record that is self-consistent but does not link to its predecessor is reported where the link
   breaks. A stretch rewritten and rehashed up to the head is caught by the first checkpoint whose
   signed hash it no longer matches, and located to the records after the checkpoint before it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC
from typing import Any

from sqlalchemy import Connection, Engine, Row, func, select

from gateway.audit.checkpoint import Checkpoint, all_checkpoints, jws_digest, retained_digest
from gateway.audit.signing import SignatureError, verify_jws
from gateway.audit.trail import (
    GENESIS_HASH,
    HEAD_ID,
    audit_event_patient,
    chain_hash,
    provenance_patient,
    recorded_of,
)
from gateway.persistence.tables import audit_head, audit_log, audit_purge


@dataclass(frozen=True, slots=True)
class VerificationReport:
    """Outcome of one walk over the chain; `first_bad_seq` names the first failing record."""

    ok: bool
    records: int
    first_bad_seq: int | None
    reason: str
    head_seq: int = 0
    head_hash: str = ""
    checkpoints: int = 0
    signatures_checked: bool = False
    last_checkpoint_seq: int = 0
    purged_through: int = 0
    key_ids: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        """Plain mapping (the audit package's verification report)."""
        return {
            "ok": self.ok,
            "records": self.records,
            "firstBadSeq": self.first_bad_seq,
            "reason": self.reason,
            "headSeq": self.head_seq,
            "headHash": self.head_hash,
            "checkpoints": self.checkpoints,
            "signaturesChecked": self.signatures_checked,
            "lastCheckpointSeq": self.last_checkpoint_seq,
            "purgedThrough": self.purged_through,
            "keyIds": list(self.key_ids),
        }


class _BrokenError(Exception):
    def __init__(self, seq: int, reason: str) -> None:
        super().__init__(reason)
        self.seq = seq
        self.reason = reason


@dataclass(frozen=True, slots=True)
class _Snapshot:
    head_seq: int
    head_hash: str
    max_seq: int | None
    checkpoints: list[Checkpoint]
    purge: Row[Any] | None


def _snapshot(conn: Connection) -> _Snapshot | None:
    head = conn.execute(
        select(
            audit_head.c.seq, audit_head.c.hash, select(func.max(audit_log.c.seq)).scalar_subquery()
        ).where(audit_head.c.id == HEAD_ID)
    ).one_or_none()
    if head is None:
        return None
    purge = conn.execute(
        select(audit_purge)
        .order_by(audit_purge.c.through_seq.desc(), audit_purge.c.id.desc())
        .limit(1)
    ).one_or_none()
    head_seq = int(head[0])
    checkpoints = [c for c in all_checkpoints(conn) if c.number >= 1]
    return _Snapshot(head_seq, str(head[1]), head[2], checkpoints, purge)


def verify_chain(
    engine: Engine,
    *,
    batch_size: int = 1000,
    public_keys: Mapping[str, Any] | None = None,
    segment: tuple[int, int] | None = None,
) -> VerificationReport:
    """Check the checkpoints (signatures with `public_keys`), the purge bridge and the chain.

    With `segment` = (first, last) only the records between the signed checkpoint before `first`
    and the one at or after `last` (or the head) are walked: an export's records are proved
    without reading six years of chain, anchored on signatures instead of the genesis.
    """
    with engine.connect() as conn:
        snap = _snapshot(conn)
    if snap is None:
        return VerificationReport(False, 0, 1, "audit_head is missing")
    verified = 0
    start = purged = 0
    last_cp_seq = max((c.seq for c in snap.checkpoints), default=0)
    key_ids = tuple(sorted({c.key_id for c in snap.checkpoints}))

    def report(ok: bool, first_bad: int | None = None, reason: str = "") -> VerificationReport:
        return VerificationReport(
            ok,
            verified,
            first_bad,
            reason,
            snap.head_seq,
            snap.head_hash,
            len(snap.checkpoints),
            public_keys is not None,
            last_cp_seq,
            purged,
            key_ids,
        )

    try:
        _check_checkpoints(snap, public_keys)
        expected_prev = GENESIS_HASH
        if snap.purge is not None:
            start, expected_prev, verified = _check_bridge(engine, snap)
            purged = start
        if snap.max_seq is not None and int(snap.max_seq) > snap.head_seq:
            # Appends advance the head in the same transaction, so this row was not appended.
            raise _BrokenError(
                snap.head_seq + 1,
                f"record {snap.head_seq + 1} lies beyond the head ({snap.head_seq})",
            )
        stop = snap.head_seq
        if segment is not None:
            # Anchors are trusted only because `_check_checkpoints` verified their signatures.
            anchor = max(
                (c for c in snap.checkpoints if start < c.seq < segment[0]),
                key=lambda c: c.seq,
                default=None,
            )
            if anchor is not None:
                start, expected_prev = anchor.seq, anchor.hash
            stop = min((c.seq for c in snap.checkpoints if c.seq >= segment[1]), default=stop)
        by_seq = {c.seq: c for c in snap.checkpoints if c.seq > start}
        signed_before = start
        last = start
        while last < stop:
            with engine.connect() as conn:
                rows = conn.execute(
                    select(audit_log)
                    .where(audit_log.c.seq > last, audit_log.c.seq <= stop)
                    .order_by(audit_log.c.seq)
                    .limit(batch_size)
                ).all()
            if not rows:
                raise _BrokenError(
                    last + 1, f"record {last + 1} is missing (the head is at {snap.head_seq})"
                )
            for row in rows:
                _check(row, last + 1, expected_prev)
                checkpoint = by_seq.get(last + 1)
                if checkpoint is not None:
                    if checkpoint.hash != row.hash:
                        raise _BrokenError(
                            signed_before + 1,
                            f"records {signed_before + 1}..{checkpoint.seq} were rewritten: "
                            f"checkpoint {checkpoint.number} signed another hash at record "
                            f"{checkpoint.seq}",
                        )
                    signed_before = checkpoint.seq
                expected_prev = str(row.hash)
                last += 1
                verified += 1
        if stop == snap.head_seq and expected_prev != snap.head_hash and snap.head_seq > start:
            raise _BrokenError(
                snap.head_seq, f"record {snap.head_seq}'s hash differs from the head's hash"
            )
    except _BrokenError as broken:
        return report(False, broken.seq, broken.reason)
    return report(True)


def _check_checkpoints(snap: _Snapshot, public_keys: Mapping[str, Any] | None) -> None:
    previous = ""
    for expected_number, checkpoint in enumerate(snap.checkpoints, start=1):
        where = checkpoint.seq
        if checkpoint.number != expected_number:
            raise _BrokenError(where, f"checkpoint {expected_number} is missing")
        if checkpoint.seq > snap.head_seq:
            raise _BrokenError(
                snap.head_seq + 1,
                f"checkpoint {checkpoint.number} signs record {checkpoint.seq} but the head is "
                f"at {snap.head_seq} (records truncated)",
            )
        payload = _payload(checkpoint, public_keys)
        expected = {
            "number": checkpoint.number,
            "seq": checkpoint.seq,
            "hash": checkpoint.hash,
            "kind": checkpoint.kind,
            "keyId": checkpoint.key_id,
            "retained": checkpoint.retained,
            "previous": previous,
        }
        if any(payload.get(k) != v for k, v in expected.items()):
            raise _BrokenError(where, f"checkpoint {checkpoint.number} differs from what it signed")
        previous = jws_digest(checkpoint.jws)


def _payload(checkpoint: Checkpoint, public_keys: Mapping[str, Any] | None) -> dict[str, Any]:
    if public_keys is None:
        from gateway.audit.signing import b64url_decode

        document: dict[str, Any] = json.loads(b64url_decode(checkpoint.jws.split(".")[1]))
        return document
    try:
        key_id, payload = verify_jws(checkpoint.jws, public_keys)
    except SignatureError as exc:
        raise _BrokenError(
            checkpoint.seq, f"checkpoint {checkpoint.number}'s signature is invalid: {exc}"
        ) from exc
    if key_id != checkpoint.key_id:
        raise _BrokenError(checkpoint.seq, f"checkpoint {checkpoint.number} names another key")
    return payload


def _check_bridge(engine: Engine, snap: _Snapshot) -> tuple[int, str, int]:
    assert snap.purge is not None
    through = int(snap.purge.through_seq)
    bridge = next((c for c in snap.checkpoints if c.number == snap.purge.checkpoint_number), None)
    if bridge is None or bridge.kind != "purge-bridge" or bridge.seq != through:
        raise _BrokenError(
            through, f"the purge through record {through} has no signed bridge checkpoint"
        )
    with engine.connect() as conn:
        kept = conn.execute(
            select(audit_log).where(audit_log.c.seq <= through).order_by(audit_log.c.seq)
        ).all()
    for row in kept:
        if chain_hash(row.prev_hash, row.resource) != row.hash:
            raise _BrokenError(
                int(row.seq), f"record {row.seq}'s content does not match its hash (edited)"
            )
        _check_columns(row, int(row.seq))
    if retained_digest((int(r.seq), str(r.hash)) for r in kept) != bridge.retained:
        first = int(kept[0].seq) if kept else through
        raise _BrokenError(
            first,
            f"the records kept below purge bridge {through} (legal holds) differ from those "
            f"checkpoint {bridge.number} signed",
        )
    return through, bridge.hash, len(kept)


def _check(row: Row[Any], seq: int, expected_prev: str) -> None:
    if row.seq != seq:
        raise _BrokenError(seq, f"record {seq} is missing (the next record is {row.seq})")
    if chain_hash(row.prev_hash, row.resource) != row.hash:
        raise _BrokenError(seq, f"record {seq}'s content does not match its hash (edited)")
    if row.prev_hash != expected_prev:
        raise _BrokenError(
            seq,
            f"record {seq} does not link to record {seq - 1} "
            f"(moved, forged, or record {seq - 1} was rewritten)",
        )
    _check_columns(row, seq)


def _check_columns(row: Row[Any], seq: int) -> None:
    # The index columns are not hashed; they must agree with the hashed resource they describe.
    try:
        document = json.loads(row.resource)
        recorded = recorded_of(document)
    except (ValueError, KeyError, TypeError) as exc:
        raise _BrokenError(seq, f"record {seq} is not a readable resource ({exc})") from exc
    if document.get("resourceType") != row.resource_type or document.get("id") != row.resource_id:
        raise _BrokenError(seq, f"record {seq}'s type/id columns differ from its resource")
    stored = row.recorded if row.recorded.tzinfo else row.recorded.replace(tzinfo=UTC)
    if stored != recorded:
        raise _BrokenError(seq, f"record {seq}'s recorded column differs from its resource")
    named = (
        audit_event_patient(document)
        if row.resource_type == "AuditEvent"
        else provenance_patient(document)
    )
    if row.patient_id != named:
        raise _BrokenError(seq, f"record {seq}'s patient column differs from its resource")


def format_report(report: VerificationReport) -> str:
    """One line for operators: OK with the head, or the first bad record and why."""
    if report.ok:
        signed = (
            f"{report.checkpoints} signed checkpoints verified (last at record "
            f"{report.last_checkpoint_seq})"
            if report.signatures_checked
            else f"{report.checkpoints} checkpoints (signatures not checked)"
        )
        bridge = f"; purged through record {report.purged_through}" if report.purged_through else ""
        return (
            f"audit chain OK: {report.records} records verified; {signed}{bridge}; "
            f"head seq {report.head_seq} hash {report.head_hash}"
        )
    return (
        f"audit chain BROKEN at record {report.first_bad_seq}: {report.reason} "
        f"({report.records} records verified before it)"
    )
