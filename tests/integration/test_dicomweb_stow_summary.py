"""STOW-RS answers first, then writes the request's DICOM Instances Transferred summary.

The summary (DCM 110104) is written on the recording threads after the response, as the DIMSE
path writes it after the last C-STORE response; shutdown waits for it, and a write that keeps
failing leaves the instance rows unsummarised for the sweep of the next start.
"""

# ruff: noqa: F811  (gw and engine are fixtures imported from test_dicomweb_stow)
from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom.uid import generate_uid
from sqlalchemy import select

from gateway.listeners import stow
from gateway.listeners.dicomweb import PENDING_SUMMARIES
from gateway.persistence.tables import instances
from gateway.transfer_audit import audit_transfer
from tests.integration.test_dicomweb_stow import (  # noqa: F401  (fixtures)
    Gateway,
    _body,
    _post,
    engine,
    gw,
)
from tests.unit.test_assembly import write_dicom

pytestmark = pytest.mark.integration


class HeldSummaries:
    """`audit_transfer` as the STOW-RS path calls it, held until released."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self._audit_transfer = audit_transfer

    def __call__(self, *args: Any) -> None:
        self.entered.set()
        self.release.wait(30)
        self._audit_transfer(*args)


@pytest.fixture
def held(monkeypatch: pytest.MonkeyPatch) -> Iterator[HeldSummaries]:
    """Summary writes that wait for `release` (always released at the end of the test)."""
    hold = HeldSummaries()
    monkeypatch.setattr(stow, "audit_transfer", hold)
    try:
        yield hold
    finally:
        hold.release.set()


def _audited(gw: Gateway) -> list[bool]:
    with gw.engine.connect() as conn:
        return list(conn.execute(select(instances.c.transfer_audited)).scalars())


async def _until(predicate: Callable[[], bool], what: str, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def _part(tmp_path: Path) -> bytes:
    return write_dicom(tmp_path / f"{generate_uid()}.dcm", generate_uid()).read_bytes()


async def test_the_response_is_sent_before_the_summary_is_written(
    gw: Gateway, tmp_path: Path, held: HeldSummaries
) -> None:
    response = await asyncio.wait_for(_post(gw, _body(_part(tmp_path))), 10)
    assert response.status == 200
    assert await asyncio.to_thread(held.entered.wait, 10)  # the write has begun and is held
    assert gw.written_summaries() == []
    assert _audited(gw) == [False]
    assert len(gw.client.app[PENDING_SUMMARIES]) == 1
    held.release.set()
    assert len(await gw.summaries()) == 1
    await _until(lambda: not gw.client.app[PENDING_SUMMARIES], "the summary task to end")
    assert _audited(gw) == [True]


async def test_shutdown_waits_for_a_pending_summary(
    gw: Gateway, tmp_path: Path, held: HeldSummaries
) -> None:
    response = await _post(gw, _body(_part(tmp_path)))
    assert response.status == 200
    assert await asyncio.to_thread(held.entered.wait, 10)
    closing = asyncio.create_task(gw.client.close())
    done, _ = await asyncio.wait({closing}, timeout=0.5)
    assert not done  # cleanup waits for the held summary
    held.release.set()
    await asyncio.wait_for(closing, 10)
    assert len(gw.written_summaries()) == 1  # written before cleanup ended, no polling
    assert _audited(gw) == [True]


async def test_a_failed_summary_write_is_retried_then_left_for_the_next_start(
    gw: Gateway,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(stow, "SUMMARY_RETRY_PAUSES", (0.01, 0.01))
    failures, attempts = [1], [0]

    def flaky(*args: Any) -> None:
        attempts[0] += 1
        if failures[0]:
            failures[0] -= 1
            raise RuntimeError("the database is away")
        audit_transfer(*args)

    monkeypatch.setattr(stow, "audit_transfer", flaky)
    assert (await _post(gw, _body(_part(tmp_path)))).status == 200
    assert len(await gw.summaries()) == 1  # the second attempt wrote it
    await _until(lambda: not gw.client.app[PENDING_SUMMARIES], "the summary task to end")
    assert attempts == [2]

    # Every attempt fails: logged, and the rows stay unsummarised for the next start's sweep.
    failures[0], attempts[0] = 3, 0
    with caplog.at_level(logging.ERROR, logger=stow.__name__):
        assert (await _post(gw, _body(_part(tmp_path)))).status == 200
        await _until(
            lambda: attempts[0] == 3 and not gw.client.app[PENDING_SUMMARIES], "three attempts"
        )
    assert "was not written; the next start writes it" in caplog.text
    assert len(gw.written_summaries()) == 1
    assert sorted(_audited(gw)) == [False, True]
