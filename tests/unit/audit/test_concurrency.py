"""Concurrent appenders serialise on the chain head: no fork, no gap."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from sqlalchemy import Engine, func, select

from gateway.audit import trail
from gateway.audit.verify import verify_chain
from gateway.persistence.tables import audit_log
from tests.unit.audit.support import decision_event

THREADS = 4
PER_THREAD = 50


def _append_many(engine: Engine, worker: int) -> list[int]:
    seqs = []
    for i in range(PER_THREAD):
        # One transaction per record, as the pipeline commits each state change with its audit.
        with engine.begin() as conn:
            event = decision_event(patient_id=f"pat-{worker}", request_id=f"req-{worker}-{i}")
            seqs.append(trail.record_event(conn, event).seq)
    return seqs


def test_concurrent_appends_form_one_contiguous_chain(audit_engine: Engine) -> None:
    with ThreadPoolExecutor(THREADS) as pool:
        results = list(pool.map(lambda w: _append_many(audit_engine, w), range(THREADS)))
    total = THREADS * PER_THREAD
    assert sorted(seq for seqs in results for seq in seqs) == list(range(1, total + 1))
    assert all(seqs == sorted(seqs) for seqs in results)
    report = verify_chain(audit_engine, batch_size=64)
    assert (report.ok, report.records, report.head_seq) == (True, total, total), report.reason
    with audit_engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(audit_log)).scalar_one() == total


def test_verifying_while_appending_sees_a_sound_prefix(audit_engine: Engine) -> None:
    with ThreadPoolExecutor(THREADS) as pool:
        writers = [pool.submit(_append_many, audit_engine, w) for w in range(THREADS)]
        reports = []
        while not all(w.done() for w in writers):
            reports.append(verify_chain(audit_engine, batch_size=16))
        for writer in writers:
            writer.result()
    assert reports
    assert all(r.ok for r in reports), [r.reason for r in reports if not r.ok]
    assert verify_chain(audit_engine).records == THREADS * PER_THREAD
