"""Runs a command under strace and reports every network peer it tried to reach.

A hospital network is closed: the gateway may talk only to the peers it is configured for. In the
tests those are all on loopback, so any AF_INET/AF_INET6 address other than loopback in a
connect/sendto/sendmsg call (including a DNS query to the resolver) is a leak, whether it comes
from Python or from a dependency's native code.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

_INET = re.compile(r'inet_addr\("([0-9.]+)"\)')
_INET6 = re.compile(r'inet_pton\(AF_INET6, "([0-9a-fA-F:.]+)"')
LOOPBACK_V4 = re.compile(r"^127\.")
LOOPBACK_V6 = {"::1", "::ffff:127.0.0.1", "::"}


def strace_prefix(log: Path) -> list[str]:
    """The command prefix that records the network system calls of a process tree."""
    strace = shutil.which("strace")
    if strace is None:
        raise RuntimeError("strace is required for the closed-network test (Debian package strace)")
    return [strace, "-f", "-qq", "-e", "trace=connect,sendto,sendmsg", "-o", str(log)]


def outside_peers(log: Path) -> list[str]:
    """Every non-loopback IP address the traced processes addressed."""
    found: list[str] = []
    for line in log.read_text(encoding="utf-8", errors="replace").splitlines():
        for addr in _INET.findall(line):
            if not LOOPBACK_V4.match(addr) and addr != "0.0.0.0":  # noqa: S104
                found.append(line.strip())
        for addr in _INET6.findall(line):
            if addr not in LOOPBACK_V6 and not addr.startswith("::ffff:127."):
                found.append(line.strip())
    return found
