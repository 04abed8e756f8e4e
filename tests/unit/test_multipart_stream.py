"""The incremental multipart splitter: any split of the body gives the same parts (RFC 2046)."""

from __future__ import annotations

import os
import random

import pytest

from gateway.listeners.multipart_stream import (
    MAX_HEADER_BYTES,
    MultipartError,
    MultipartSplitter,
    PartData,
    PartEnd,
    PartStart,
)

BOUNDARY = "b0undary-x"


def _body(*parts: bytes, preamble: bytes = b"", padding: bytes = b"") -> bytes:
    out = preamble
    for content in parts:
        out += (
            f"\r\n--{BOUNDARY}".encode() + padding + b"\r\nContent-Type: application/dicom\r\n\r\n"
        )
        out += content
    return out + f"\r\n--{BOUNDARY}--\r\nepilogue".encode()


def _split(body: bytes, sizes: list[int]) -> list[tuple[dict[str, str], bytes]]:
    splitter = MultipartSplitter(BOUNDARY)
    parts: list[tuple[dict[str, str], bytes]] = []
    current: bytearray | None = None
    offset = 0
    for size in [*sizes, len(body)]:
        for event in splitter.feed(body[offset : offset + size]):
            if isinstance(event, PartStart):
                current = bytearray()
                parts.append((event.headers, b""))
            elif isinstance(event, PartData):
                assert current is not None
                current += event.data
            else:
                assert isinstance(event, PartEnd)
                assert current is not None
                parts[-1] = (parts[-1][0], bytes(current))
                current = None
        offset += size
        if offset >= len(body):
            break
    splitter.close()
    return parts


# Contents that look like the delimiter but are not: the splitter must not cut there.
TRICKY = [
    b"",
    os.urandom(5000),
    f"\r\n--{BOUNDARY[:-1]}".encode() * 3,
    f"--{BOUNDARY}".encode(),  # without the CRLF it is content
    b"\r\n-",
    b"x" * 70000,
]


@pytest.mark.parametrize("seed", range(20))
def test_any_split_of_the_body_gives_the_same_parts(seed: int) -> None:
    rng = random.Random(seed)  # noqa: S311 - reproducible splits, not secrets
    body = _body(*TRICKY, preamble=b"ignored preamble", padding=b" \t" if seed % 2 else b"")
    sizes = [rng.choice([1, 2, 3, 7, 64, 1000, 65536]) for _ in range(len(body))]
    parts = _split(body, sizes)
    assert [content for _, content in parts] == TRICKY
    assert all(headers == {"content-type": "application/dicom"} for headers, _ in parts)


def test_a_body_starting_with_the_delimiter_and_a_part_without_headers() -> None:
    body = f"--{BOUNDARY}\r\n\r\nabc\r\n--{BOUNDARY}--".encode()
    assert _split(body, [1] * len(body)) == [({}, b"abc")]


@pytest.mark.parametrize(
    "body",
    [
        b"--nonsense without a closing boundary",
        f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\nno close".encode(),
        f"--{BOUNDARY}junk\r\n\r\nx\r\n--{BOUNDARY}--".encode(),
        f"--{BOUNDARY}\r\nno colon here\r\n\r\nx\r\n--{BOUNDARY}--".encode(),
        f"--{BOUNDARY}\r\nX: {'y' * MAX_HEADER_BYTES}".encode(),
    ],
)
def test_malformed_bodies_raise(body: bytes) -> None:
    with pytest.raises(MultipartError):
        _split(body, [len(body)])


def test_the_boundary_length_is_checked() -> None:
    with pytest.raises(MultipartError):
        MultipartSplitter("")
    with pytest.raises(MultipartError):
        MultipartSplitter("x" * 71)


def test_memory_stays_bounded_for_a_large_part() -> None:
    splitter = MultipartSplitter(BOUNDARY)
    splitter.feed(f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode())
    chunk = os.urandom(1 << 16)
    for _ in range(200):  # 12.5 MiB
        events = splitter.feed(chunk)
        assert all(isinstance(e, PartData) for e in events)
        assert len(splitter._buffer) < len(BOUNDARY) + 4
