"""Signed checkpoints: signatures, rotation, and rewrites that recompute every hash to the head."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, select, text
from sqlalchemy.exc import DBAPIError

from gateway.audit import trail
from gateway.audit.checkpoint import (
    CheckpointPolicy,
    all_checkpoints,
    checkpoint_if_due,
    create_checkpoint,
    rotate_key,
)
from gateway.audit.signing import AuditKeyring, SignatureError, verify_jws
from gateway.audit.verify import format_report, verify_chain
from gateway.persistence.tables import audit_checkpoint, audit_head, audit_log
from gateway.persistence.triggers import drop_append_only_triggers, drop_retention_triggers
from tests.unit.audit.support import decision_event, scored_event


def _append(engine: Engine, n: int) -> None:
    with engine.begin() as conn:
        for i in range(n):
            trail.record_event(conn, decision_event() if i % 2 else scored_event())


@pytest.fixture
def keyring(tmp_path: Path) -> AuditKeyring:
    """A fresh signing-key directory."""
    return AuditKeyring(tmp_path / "keys" / "audit")


def _checkpointed(engine: Engine, keyring: AuditKeyring) -> None:
    # records 1-4, checkpoint 1 at 4 (its event is 5), records 6-9, checkpoint 2 at 9 (event 10)
    _append(engine, 4)
    with engine.begin() as conn:
        create_checkpoint(conn, keyring, "manual")
    _append(engine, 4)
    with engine.begin() as conn:
        create_checkpoint(conn, keyring, "manual")
    _append(engine, 2)


def _unguard(engine: Engine) -> None:
    with engine.begin() as conn:
        drop_retention_triggers(conn)
        drop_append_only_triggers(conn)


def test_checkpoints_sign_the_chain_and_verify(audit_engine: Engine, keyring: AuditKeyring) -> None:
    _checkpointed(audit_engine, keyring)
    report = verify_chain(audit_engine, public_keys=keyring.public_jwks())
    assert report.ok, report.reason
    assert (report.checkpoints, report.last_checkpoint_seq, report.head_seq) == (2, 9, 12)
    assert report.signatures_checked
    assert "2 signed checkpoints verified" in format_report(report)
    with audit_engine.connect() as conn:
        first, second = all_checkpoints(conn)
        events = trail.search(conn, "AuditEvent", limit=100)
    key_id, payload = verify_jws(second.jws, keyring.public_jwks())
    assert key_id == first.key_id == second.key_id
    assert payload["previous"]
    assert payload["seq"] == 9
    signed = [e for e in events if "checkpoint-signed" in json.dumps(e)]
    assert len(signed) == 2


def test_rewrite_rehashed_up_to_the_head_is_caught_by_a_checkpoint(
    audit_engine: Engine, keyring: AuditKeyring
) -> None:
    _checkpointed(audit_engine, keyring)
    _unguard(audit_engine)
    with audit_engine.begin() as conn:
        # Edit record 7 and recompute every later hash and the head: the chain alone is sound.
        prev = conn.execute(select(audit_log.c.hash).where(audit_log.c.seq == 6)).scalar_one()
        for row in conn.execute(select(audit_log).where(audit_log.c.seq >= 7).order_by("seq")):
            document = json.loads(row.resource)
            if row.seq == 7:
                document["outcome"] = "12"
            body = json.dumps(document, sort_keys=True, separators=(",", ":"))
            digest = trail.chain_hash(prev, body)
            conn.execute(
                audit_log.update()
                .where(audit_log.c.seq == row.seq)
                .values(resource=body, prev_hash=prev, hash=digest)
            )
            prev = digest
        conn.execute(audit_head.update().values(hash=prev))
    report = verify_chain(audit_engine, public_keys=keyring.public_jwks())
    assert not report.ok
    assert report.first_bad_seq == 5
    assert "records 5..9 were rewritten" in report.reason


def test_forged_or_missing_checkpoints_are_detected(
    audit_engine: Engine, keyring: AuditKeyring
) -> None:
    _checkpointed(audit_engine, keyring)
    _unguard(audit_engine)
    jwks = keyring.public_jwks()
    with audit_engine.begin() as conn:
        conn.execute(audit_checkpoint.update().where(audit_checkpoint.c.number == 2).values(seq=8))
    report = verify_chain(audit_engine, public_keys=jwks)
    assert not report.ok
    assert "checkpoint 2 differs from what it signed" in report.reason
    other = AuditKeyring(keyring.directory.parent / "other").active()
    with audit_engine.begin() as conn:
        row = conn.execute(select(audit_checkpoint).where(audit_checkpoint.c.number == 2)).one()
        payload = json.loads(__import__("base64").urlsafe_b64decode(row.jws.split(".")[1] + "=="))
        conn.execute(
            audit_checkpoint.update()
            .where(audit_checkpoint.c.number == 2)
            .values(jws=other.sign_jws({**payload, "keyId": row.key_id}))
        )
    report = verify_chain(audit_engine, public_keys=jwks)
    assert not report.ok
    assert "signature is invalid" in report.reason
    with audit_engine.begin() as conn:
        conn.execute(audit_checkpoint.delete().where(audit_checkpoint.c.number == 1))
    report = verify_chain(audit_engine, public_keys=jwks)
    assert not report.ok
    assert "checkpoint 1 is missing" in report.reason


def test_truncating_everything_after_a_checkpoint_is_detected(
    audit_engine: Engine, keyring: AuditKeyring
) -> None:
    _checkpointed(audit_engine, keyring)
    _unguard(audit_engine)
    with audit_engine.begin() as conn:
        conn.execute(audit_log.delete())
        conn.execute(text("UPDATE audit_head SET seq = 0, hash = :h"), {"h": trail.GENESIS_HASH})
    report = verify_chain(audit_engine, public_keys=keyring.public_jwks())
    assert not report.ok
    assert report.first_bad_seq == 1
    assert "records truncated" in report.reason


def test_rotation_keeps_old_checkpoints_verifiable(
    audit_engine: Engine, keyring: AuditKeyring
) -> None:
    _append(audit_engine, 3)
    old, new = rotate_key(audit_engine, keyring)
    _append(audit_engine, 2)
    with audit_engine.begin() as conn:
        create_checkpoint(conn, keyring, "manual")
    assert old != new
    jwks = keyring.public_jwks()
    assert {k["kid"] for k in jwks["keys"]} == {old, new}
    report = verify_chain(audit_engine, public_keys=jwks)
    assert report.ok, report.reason
    assert set(report.key_ids) == {old, new}
    only_new = {"keys": [k for k in jwks["keys"] if k["kid"] == new]}
    report = verify_chain(audit_engine, public_keys=only_new)
    assert not report.ok
    assert f"key '{old}' is not in the public key set" in report.reason
    with pytest.raises(SignatureError):
        verify_jws("not.a.jws", jwks)


def test_periodic_checkpoints_follow_the_policy(
    audit_engine: Engine, keyring: AuditKeyring
) -> None:
    policy = CheckpointPolicy(every_records=5, every_seconds=60)
    now = datetime.now(UTC)
    assert checkpoint_if_due(audit_engine, keyring, policy, now) is None  # nothing to sign
    _append(audit_engine, 2)
    first = checkpoint_if_due(audit_engine, keyring, policy, now)  # the first is due at once
    assert first is not None
    assert first.seq == 2
    _append(audit_engine, 3)
    assert checkpoint_if_due(audit_engine, keyring, policy, now) is None
    _append(audit_engine, 2)
    by_count = checkpoint_if_due(audit_engine, keyring, policy, now)
    assert by_count is not None
    assert by_count.seq == 8
    _append(audit_engine, 1)
    assert checkpoint_if_due(audit_engine, keyring, policy, now + timedelta(seconds=30)) is None
    by_time = checkpoint_if_due(audit_engine, keyring, policy, now + timedelta(seconds=61))
    assert by_time is not None
    assert by_time.seq == 10
    assert verify_chain(audit_engine, public_keys=keyring.public_jwks()).ok


def test_the_database_refuses_to_change_checkpoints(
    audit_engine: Engine, keyring: AuditKeyring
) -> None:
    _checkpointed(audit_engine, keyring)
    for statement in ("UPDATE audit_checkpoint SET seq = 1", "DELETE FROM audit_checkpoint"):
        with pytest.raises(DBAPIError, match="append-only"), audit_engine.begin() as conn:
            conn.execute(text(statement))
