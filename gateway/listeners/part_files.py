"""Writing a received part to its file: every byte, or an error.

The receivers write unbuffered, so a data set's bytes go to the file in the chunks they arrive
in without a second copy; a raw write may take fewer bytes than it was given (a signal, a
nearly full disk), and a part missing bytes its digest covers would be recorded as intact.
"""

from __future__ import annotations

import contextlib
import errno
import os
from typing import BinaryIO


def write_fully(out: BinaryIO, data: bytes | bytearray | memoryview) -> None:
    """Write all of `data` to `out`, an unbuffered file; raises OSError when it takes no more."""
    view = memoryview(data)
    while view:
        written = out.write(view)
        if not written:
            raise OSError(errno.EIO, "the file took no more bytes")
        view = view[written:]


# A large part's bytes are handed to the disk a MiB at a time while the rest still arrives.
WRITEBACK_BYTES = 1024 * 1024


class EarlyWriteback:
    """Starts the disk writing a large part's bytes behind the receiver, a MiB at a time.

    A part is fsynced before it is recorded: without this, every byte of a large instance goes
    to disk in that fsync, after the last one arrived (9 ms for a 12 MB X-ray on the test
    machine). A hint only (`posix_fadvise` starts the write-back of dirty pages on Linux); the
    fsync still makes the part durable, and a part under a MiB is left to it alone.
    """

    def __init__(self, out: BinaryIO, *, written: int = 0) -> None:
        self._fd = out.fileno()
        self._started = 0  # bytes already handed to the disk
        self._written = written  # bytes in the file so far

    def wrote(self, count: int) -> None:
        """`count` more bytes were written after the earlier ones."""
        self._written += count
        pending = self._written - self._started
        if pending < WRITEBACK_BYTES or _FADVISE is None:
            return
        with contextlib.suppress(OSError):
            _FADVISE(self._fd, self._started, pending, os.POSIX_FADV_DONTNEED)
        self._started = self._written


_FADVISE = getattr(os, "posix_fadvise", None)
