"""The DICOM acceptor's listening socket: one thread per association, a limit, optional TLS.

A connection counts against the association limit from its arrival (as an association being
negotiated does), so the limit also bounds idle connections; each gives its slot back when it
closes or its ARTIM timer runs out.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import threading
from pathlib import Path

from gateway.listeners.dicom_association import AcceptancePolicy, Association, DimseHandler

log = logging.getLogger(__name__)

_ACCEPT_POLL_SECONDS = 0.5
_BACKLOG = 64


class DicomServer:
    """Accepts connections on a TCP port and serves each association on its own thread."""

    def __init__(
        self,
        address: tuple[str, int],
        policy: AcceptancePolicy,
        handler: DimseHandler,
        incoming: Path,
        *,
        maximum_associations: int,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._policy = policy
        self._handler = handler
        self._incoming = incoming
        self._limit = maximum_associations
        # Connections beyond the limit are still read, to answer them with a rejection; this
        # many open at once is the most that is ever served.
        self._connection_cap = 2 * maximum_associations + 8
        self._ssl = ssl_context
        self._lock = threading.Lock()
        self._active: dict[int, socket.socket] = {}
        self._threads: set[threading.Thread] = set()
        self._stopping = threading.Event()
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self._listener = socket.socket(family, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(address)
        self._listener.listen(_BACKLOG)
        self._listener.settimeout(_ACCEPT_POLL_SECONDS)
        self._acceptor = threading.Thread(
            target=self._accept_loop, name="dicom-accept", daemon=True
        )

    @property
    def server_address(self) -> tuple[str, int]:
        """The bound address (the port is the real one when 0 was asked for)."""
        host, port = self._listener.getsockname()[:2]
        return str(host), int(port)

    def start(self) -> None:
        """Start accepting in the background."""
        self._acceptor.start()

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop accepting, abort open associations and wait for their threads."""
        self._stopping.set()
        # On Linux this wakes the blocked accept() at once; the poll interval is the fallback.
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._acceptor.join(timeout)
        self._listener.close()
        with self._lock:
            open_sockets = list(self._active.values())
            threads = list(self._threads)
        for sock in open_sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        for thread in threads:
            thread.join(timeout)

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                conn, _addr = self._listener.accept()
            except TimeoutError:
                continue
            except OSError as exc:
                if self._stopping.is_set():
                    return
                log.warning("accept failed: %s", exc)
                continue
            # Counted here, not when its thread first runs: a burst accepted faster than threads
            # start would otherwise pass the cap (and the association limit) uncounted.
            with self._lock:
                full = len(self._active) >= self._connection_cap
                if not full:
                    self._active[id(conn)] = conn
                over = len(self._active) > self._limit
            if full:
                # A flood of connections (a scan, a misbehaving sender) must not become a flood
                # of threads: past the cap, closed at once without reading.
                log.warning("connection refused: %d connections open", self._connection_cap)
                with contextlib.suppress(OSError):
                    conn.close()
                continue
            thread = threading.Thread(
                target=self._serve, args=(conn, over), name="dicom-association", daemon=True
            )
            with self._lock:
                self._threads.add(thread)
            try:
                thread.start()
            except RuntimeError as exc:  # no thread to be had: the connection is not served
                log.warning("connection dropped: %s", exc)
                with self._lock:
                    self._active.pop(id(conn), None)
                    self._threads.discard(thread)
                with contextlib.suppress(OSError):
                    conn.close()

    def _serve(self, conn: socket.socket, over: bool) -> None:
        key = id(conn)
        try:
            # Modalities built on dcmtk answer in two writes; without TCP_NODELAY each exchange
            # waits for a delayed ACK (tens of ms per instance).
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock = self._secure(conn)
            if sock is None:
                return
            with self._lock:
                self._active[key] = sock
            Association(
                sock, self._policy, self._handler, self._incoming, over_limit=lambda: over
            ).serve()
        except Exception:
            # One association's failure never stops the acceptor or the other associations.
            log.exception("association thread failed")
        finally:
            with self._lock:
                sock_now = self._active.pop(key, conn)
                self._threads.discard(threading.current_thread())
            with contextlib.suppress(OSError):
                sock_now.close()
            with contextlib.suppress(OSError):
                conn.close()

    def _secure(self, conn: socket.socket) -> socket.socket | None:
        if self._ssl is None:
            return conn
        conn.settimeout(self._policy.artim_seconds)
        try:
            return self._ssl.wrap_socket(conn, server_side=True)
        except (ssl.SSLError, OSError) as exc:
            log.warning("TLS handshake failed: %s", exc)
            return None
