"""A received part's bytes all reach its file, whatever a raw write takes at a time."""

from __future__ import annotations

import builtins
import io
from pathlib import Path
from typing import Any

import pytest

from gateway.listeners.part_files import write_fully


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
