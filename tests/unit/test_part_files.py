"""A received part's bytes all reach its file, whatever a raw write takes at a time."""

from __future__ import annotations

import builtins
import io
import os
from pathlib import Path
from typing import Any

import pytest

from gateway.listeners import part_files
from gateway.listeners.part_files import WRITEBACK_BYTES, EarlyWriteback, write_fully


class ShortWrites:
    """A raw file that takes at most `limit` bytes per write, as a raw write may."""

    def __init__(self, raw: Any, limit: int) -> None:
        self._raw = raw
        self._limit = limit
        self.calls = 0

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Write a prefix of `data`."""
        self.calls += 1
        return int(self._raw.write(memoryview(data)[: self._limit]))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._raw, name)


def short_writing_open(limit: int) -> Any:
    """An `open` whose unbuffered files take at most `limit` bytes per write."""

    def fake_open(path: Any, mode: str = "r", buffering: int = -1, **kwargs: Any) -> Any:
        raw = builtins.open(path, mode, buffering, **kwargs)  # noqa: SIM115 (closed by its user)
        return ShortWrites(raw, limit) if buffering == 0 else raw

    return fake_open


def test_every_byte_is_written_when_each_write_takes_a_few(tmp_path: Path) -> None:
    data = bytes(range(256)) * 40
    with (tmp_path / "part").open("xb", buffering=0) as raw:
        out = ShortWrites(raw, 7)
        write_fully(out, data)  # type: ignore[arg-type]
        write_fully(out, bytearray(b"tail"))  # type: ignore[arg-type]
    assert (tmp_path / "part").read_bytes() == data + b"tail"
    assert out.calls > len(data) // 7


def test_a_file_that_takes_nothing_raises_rather_than_looping() -> None:
    class Stuck(io.RawIOBase):
        def writable(self) -> bool:
            return True

        def write(self, _data: Any) -> int:
            return 0

    with pytest.raises(OSError, match="took no more bytes"):
        write_fully(Stuck(), b"abc")  # type: ignore[arg-type]


def test_nothing_to_write_writes_nothing(tmp_path: Path) -> None:
    with (tmp_path / "part").open("xb", buffering=0) as raw:
        out = ShortWrites(raw, 7)
        write_fully(out, b"")  # type: ignore[arg-type]
    assert out.calls == 0


def _fadvised(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int, int]]:
    """The write-back hints given from now on: (offset, length, advice)."""
    calls: list[tuple[int, int, int]] = []
    monkeypatch.setattr(
        part_files,
        "_FADVISE",
        lambda _fd, offset, length, advice: calls.append((offset, length, advice)),
    )
    return calls


def test_a_large_part_is_handed_to_the_disk_a_mib_at_a_time_behind_the_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _fadvised(monkeypatch)
    chunk = 300 * 1024
    with (tmp_path / "part").open("xb", buffering=0) as out:
        writeback = EarlyWriteback(out, written=200)  # the file meta written first
        for _ in range(10):
            write_fully(out, bytes(chunk))
            writeback.wrote(chunk)
    mib = WRITEBACK_BYTES
    assert calls == [
        (0, 4 * chunk + 200, os.POSIX_FADV_DONTNEED),  # the first MiB reached at 1.17 MiB
        (4 * chunk + 200, 4 * chunk, os.POSIX_FADV_DONTNEED),
    ]
    # Contiguous, in order, never past what was written, and each at least a MiB.
    assert all(length >= mib for _, length, _ in calls)
    assert calls[-1][0] + calls[-1][1] <= 10 * chunk + 200


def test_a_part_under_a_mib_is_left_to_its_fsync_and_a_refused_hint_is_no_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _fadvised(monkeypatch)
    with (tmp_path / "small").open("xb", buffering=0) as out:
        writeback = EarlyWriteback(out)
        writeback.wrote(WRITEBACK_BYTES - 1)
    assert calls == []

    def refuse(*_args: object) -> None:
        raise OSError(22, "Invalid argument")

    monkeypatch.setattr(part_files, "_FADVISE", refuse)
    with (tmp_path / "large").open("xb", buffering=0) as out:
        EarlyWriteback(out).wrote(2 * WRITEBACK_BYTES)  # no exception: only a hint
