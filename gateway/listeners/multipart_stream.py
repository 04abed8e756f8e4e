"""An incremental splitter of multipart bodies (RFC 2046 5.1), for bodies that never fit memory.

Bytes are fed as they arrive; the splitter returns what it can already tell: a part's headers,
pieces of its content and its end. It holds at most the bytes that could still be the start of a
delimiter, plus one header block (bounded), so a STOW-RS request of any size streams through.
No I/O here; a body that breaks RFC 2046 raises MultipartError.
"""

from __future__ import annotations

from dataclasses import dataclass

# A part's header block larger than this is refused (headers of a DICOM part are a few lines).
MAX_HEADER_BYTES = 16 * 1024


class MultipartError(ValueError):
    """The body is not a well-formed multipart body."""


@dataclass(frozen=True, slots=True)
class PartStart:
    """A new part begins; its header fields, names lower-cased."""

    headers: dict[str, str]


@dataclass(frozen=True, slots=True)
class PartData:
    """The next bytes of the current part's content."""

    data: bytes


@dataclass(frozen=True, slots=True)
class PartEnd:
    """The current part is complete."""


Event = PartStart | PartData | PartEnd


def _headers(block: bytes) -> dict[str, str]:
    fields: dict[str, str] = {}
    for line in block.decode("latin-1").split("\r\n"):
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name.strip():
            raise MultipartError(f"malformed part header line {line[:80]!r}")
        fields[name.strip().lower()] = value.strip()
    return fields


class MultipartSplitter:
    """Turns fed body bytes into PartStart / PartData / PartEnd events."""

    def __init__(self, boundary: str) -> None:
        if not boundary or len(boundary) > 70:
            raise MultipartError("the boundary must have 1 to 70 characters")
        self._dash_boundary = b"--" + boundary.encode("latin-1")
        self._delimiter = b"\r\n" + self._dash_boundary
        self._buffer = bytearray()
        self._state = "preamble"  # preamble, after-delimiter, headers, body, epilogue
        self.done = False

    def feed(self, data: bytes) -> list[Event]:
        """Take the next bytes of the body; returns the events they complete."""
        self._buffer += data
        events: list[Event] = []
        while self._step(events):
            pass
        return events

    def close(self) -> None:
        """The body ended; raises MultipartError unless the close delimiter was seen."""
        if not self.done:
            raise MultipartError("the body ends before the close delimiter")

    def _step(self, events: list[Event]) -> bool:
        buffer = self._buffer
        if self._state == "preamble":
            # The first delimiter may open the body without a preceding CRLF.
            if buffer.startswith(self._dash_boundary):
                del buffer[: len(self._dash_boundary)]
                self._state = "after-delimiter"
                return True
            at = buffer.find(self._delimiter)
            if at < 0:
                # Keep only what could be the start of the delimiter.
                keep = len(self._delimiter) - 1
                if len(buffer) > keep:
                    del buffer[: len(buffer) - keep]
                return False
            del buffer[: at + len(self._delimiter)]
            self._state = "after-delimiter"
            return True
        if self._state == "after-delimiter":
            if len(buffer) < 2:
                return False
            if buffer[:2] == b"--":
                self._state = "epilogue"
                self.done = True
                buffer.clear()
                return False
            # Transport padding (linear white space) may follow the boundary before its CRLF.
            end = buffer.find(b"\r\n")
            if end < 0:
                if len(buffer) > 256:
                    raise MultipartError("no line break after a boundary")
                return False
            if buffer[:end].strip(b" \t"):
                raise MultipartError("unexpected characters after a boundary")
            del buffer[: end + 2]
            self._state = "headers"
            return True
        if self._state == "headers":
            if buffer.startswith(b"\r\n"):
                block_end, skip = 0, 2  # a part without header fields
            else:
                block_end = buffer.find(b"\r\n\r\n")
                skip = 4
                if block_end < 0:
                    if len(buffer) > MAX_HEADER_BYTES:
                        raise MultipartError("a part's header block is too long")
                    return False
            events.append(PartStart(_headers(bytes(buffer[:block_end]))))
            del buffer[: block_end + skip]
            self._state = "body"
            return True
        if self._state == "body":
            at = buffer.find(self._delimiter)
            if at < 0:
                safe = len(buffer) - (len(self._delimiter) - 1)
                if safe > 0:
                    events.append(PartData(bytes(memoryview(buffer)[:safe])))
                    del buffer[:safe]
                return False
            if at:
                events.append(PartData(bytes(memoryview(buffer)[:at])))
            events.append(PartEnd())
            del buffer[: at + len(self._delimiter)]
            self._state = "after-delimiter"
            return True
        buffer.clear()  # the epilogue is ignored
        return False
