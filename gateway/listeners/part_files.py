"""Writing a received part to its file: every byte, or an error.

The receivers write unbuffered, so a data set's bytes go to the file in the chunks they arrive
in without a second copy; a raw write may take fewer bytes than it was given (a signal, a
nearly full disk), and a part missing bytes its digest covers would be recorded as intact.
"""

from __future__ import annotations

import errno
from typing import BinaryIO


def write_fully(out: BinaryIO, data: bytes | bytearray | memoryview) -> None:
    """Write all of `data` to `out`, an unbuffered file; raises OSError when it takes no more."""
    view = memoryview(data)
    while view:
        written = out.write(view)
        if not written:
            raise OSError(errno.EIO, "the file took no more bytes")
        view = view[written:]
