"""A STOW-RS request cancelled (a shutdown) while a recording thread writes one of its parts.

The thread's write is never cut off by closing the file under it, and the unfinished part's
file is removed once the write is over.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, cast

import pytest
from aiohttp import web

from gateway.ingest import InstanceRecorder
from gateway.listeners import stow
from gateway.transfer_audit import TransferTally

BOUNDARY = "cancel-boundary"
SLICE = 64 * 1024


class _Body:
    """A request body that stops arriving after its chunks (the sender went quiet)."""

    def __init__(self, chunks: list[bytes]) -> None:
        self._chunks = chunks

    async def iter_any(self) -> AsyncIterator[bytes]:
        for chunk in self._chunks:
            yield chunk
            await asyncio.sleep(0)
        await asyncio.Event().wait()


class _Request:
    def __init__(self, chunks: list[bytes]) -> None:
        self.headers = {
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'
        }
        self.remote = "127.0.0.1"
        self.content = _Body(chunks)


@pytest.fixture
def executor() -> Iterator[ThreadPoolExecutor]:
    pool = ThreadPoolExecutor(2)
    yield pool
    pool.shutdown(wait=True)


class _HeldWrites:
    """Holds the first slice's write, its file open, until released; records how each went."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.release = threading.Event()
        self.errors: list[BaseException] = []
        self.writes: list[int] = []
        self._write = stow._IncomingPart.write

    def __call__(self, part: Any, data: bytes | bytearray) -> None:
        if not self.started.is_set():
            self._write(part, b"")  # the part's file is open while the write is held
            self.started.set()
            self.release.wait(10)
        try:
            self._write(part, data)
            self.writes.append(len(data))
        except BaseException as exc:  # a file closed under the write
            self.errors.append(exc)
            raise


async def _wait_for(condition: Any, seconds: float = 5.0) -> None:
    for _ in range(int(seconds / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached")


@pytest.mark.parametrize(
    ("part_ended", "cancellations"),
    [(False, 1), (False, 2), (True, 1)],
    ids=["mid-part", "mid-part-cancelled-twice", "part-ended-before-its-write"],
)
async def test_a_cancelled_request_never_closes_a_part_under_its_write(
    tmp_path: Path,
    executor: ThreadPoolExecutor,
    monkeypatch: pytest.MonkeyPatch,
    part_ended: bool,
    cancellations: int,
) -> None:
    held = _HeldWrites()
    monkeypatch.setattr(stow._IncomingPart, "write", lambda part, data: held(part, data))
    monkeypatch.setattr(stow, "WRITE_BYTES", SLICE)
    incoming = tmp_path / ".incoming"
    request = stow.StowRequest(
        cast(InstanceRecorder, None),  # the held write never lets a part be recorded
        incoming,
        "http://127.0.0.1",
        "",
        TransferTally("STOW-RS", transport="STOW-RS"),
        max_instance_bytes=1 << 30,
        max_request_bytes=1 << 30,
        executor=executor,
    )
    head = f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()
    # The first slice is written after the second chunk. Mid-part, the third chunk makes another
    # slice, which waits for that write; otherwise the part ends and its recording waits.
    chunks = [head, b"\x01" * SLICE, b"\x02" * SLICE]
    if part_ended:
        chunks.append(f"\r\n--{BOUNDARY}--\r\n".encode())
    else:
        chunks += [b"\x03" * SLICE, b"\x04" * 100]
    consuming = asyncio.create_task(request.consume(cast(web.Request, _Request(chunks))))
    await asyncio.to_thread(held.started.wait, 10)
    await asyncio.sleep(0.05)  # the request now waits for that write
    assert not consuming.done()
    assert len(list(incoming.glob(".stow-*.part"))) == 1

    for _ in range(cancellations):
        consuming.cancel()
        await asyncio.sleep(0.05)
    held.release.set()
    with pytest.raises(asyncio.CancelledError):
        await consuming

    await _wait_for(lambda: bool(held.writes or held.errors))
    await _wait_for(lambda: not any(incoming.glob(".stow-*.part")))
    assert held.errors == []
    assert len(held.writes) == 1  # the held slice, whole; nothing written after the cancel
