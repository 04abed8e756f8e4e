"""Durable spool of received instances: `<root>/<StudyInstanceUID>/<SOPInstanceUID>.<version>.dcm`.

A file is created exclusively under its final name (never replacing an existing one), written,
fsynced, and its directory fsynced, all before any database row refers to it; so a file a row
refers to always holds complete, durable bytes. A crash before the commit leaves an orphan (whole
or partial) that no row refers to; its version number is skipped and `gateway.spool_reaper`
removes it at the next start.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, NamedTuple

from gateway.domain.errors import GatewayError, OutOfResources

CHUNK_BYTES = 1024 * 1024
# Free space kept on the volume so the database and logs beside the spool can still write.
MIN_FREE_BYTES = 64 * 1024 * 1024
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_FULL = (errno.ENOSPC, errno.EDQUOT)
# Study directories remembered as existing; forgotten all at once past this many.
KNOWN_DIRECTORIES = 4096


class SpooledFile(NamedTuple):
    """Where an instance was spooled, its size in bytes and the SHA-256 of its bytes from
    `hash_from` on (the data set, so the same instance sent with other file meta is the same)."""

    path: Path
    size: int
    sha256: str
    synced: bool = True  # False: linked, but `Spool.sync` must run before any row refers to it


class SpoolCollisionError(GatewayError):
    """The file name for this version already exists; the caller picks the next version."""

    code = "conflict"


def _component(uid: str) -> str:
    # UIDs are digits and dots (PS3.5 9.1); anything else must not reach the file system as a
    # path, so a non-conformant UID is named by its hash instead.
    if _UID.match(uid) and len(uid) <= 64:
        return uid
    return "x" + hashlib.sha256(uid.encode("utf-8", "surrogateescape")).hexdigest()[:40]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _spool_usage(root: Path) -> int:
    total = 0
    for dirpath, dirs, files in os.walk(root):
        # Files being received (".incoming") are counted by their reservation, not twice.
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            try:
                total += os.stat(os.path.join(dirpath, name)).st_size
            except FileNotFoundError:
                continue
    return total


class Spool:
    """Writes instances durably under `root`; refuses writes past `quota_bytes` or a full disk."""

    def __init__(
        self, root: Path, quota_bytes: int | None = None, *, min_free_bytes: int = MIN_FREE_BYTES
    ) -> None:
        self.root = root
        self.quota_bytes = quota_bytes
        self.min_free_bytes = min_free_bytes
        self._lock = threading.Lock()
        self._used: int | None = None  # bytes under root, measured on first use
        self._reserved = 0  # bytes of writes in progress
        self._device: int | None = None  # the root's file system, once the root exists
        self._directories: set[Path] = set()  # study directories created or seen before

    def path_for(self, study_uid: str, sop_uid: str, version: int) -> Path:
        """The final path of one version of an instance."""
        return self.root / _component(study_uid) / f"{_component(sop_uid)}.{int(version)}.dcm"

    def store_file(
        self,
        source: Path | bytes | BinaryIO,
        study_uid: str,
        sop_uid: str,
        version: int,
        *,
        hash_from: int = 0,
        adopt: bool = False,
        sha256: str | None = None,
        defer_sync: bool = False,
    ) -> SpooledFile:
        """Copy `source` durably to its spool path; raises OutOfResources or SpoolCollisionError.

        With `adopt`, a source file on the spool's file system is linked instead of copied: only
        for a file the caller owns and will not change (a received temporary file); `sha256`,
        when the caller hashed its bytes from `hash_from` on as it wrote them, spares reading
        them back. With `defer_sync`, an adopted file is linked but not yet fsynced: the caller
        runs `sync` (while doing other work) and refers to the file only after it returned.
        """
        final = self.path_for(study_uid, sop_uid, version)
        if final.exists():
            raise SpoolCollisionError(f"{final.name} already exists")
        source_stat = source.stat() if isinstance(source, Path) else None
        expected = len(source) if isinstance(source, bytes) else 0
        if source_stat is not None:
            expected = source_stat.st_size
        device = self._root_device()
        try:
            free = shutil.disk_usage(self.root).free
        except FileNotFoundError:
            # The root was removed behind the spool's back: made again, as on first use.
            self._device = None
            self._directories.clear()
            device = self._root_device()
            free = shutil.disk_usage(self.root).free
        if free < expected + self.min_free_bytes:
            raise OutOfResources("spool volume is nearly full")
        self._reserve(expected)
        reservation = [expected]
        try:
            same_volume = source_stat is not None and source_stat.st_dev == device
            if adopt and isinstance(source, Path) and same_volume:
                spooled = self._adopt(source, final, hash_from, sha256, defer_sync, expected)
            else:
                spooled = self._write(source, final, reservation, hash_from)
        except OSError as exc:
            self._settle(reservation[0], 0)
            if exc.errno in _FULL:
                raise OutOfResources("spool volume is full") from exc
            raise
        except BaseException:
            self._settle(reservation[0], 0)
            raise
        self._settle(reservation[0], spooled.size)
        return spooled

    def _root_device(self) -> int:
        if self._device is None:
            self.root.mkdir(parents=True, exist_ok=True)
            self._device = self.root.stat().st_dev
        return self._device

    def _directory(self, directory: Path) -> None:
        """Ensure the study directory exists, its name durable in the root, asking once."""
        if directory in self._directories:
            return
        if not directory.exists():
            directory.mkdir(parents=True, exist_ok=True)
            _fsync_dir(directory.parent)
        if len(self._directories) >= KNOWN_DIRECTORIES:
            self._directories.clear()
        self._directories.add(directory)

    def _forget(self, directory: Path) -> None:
        # A remembered directory was removed behind the spool's back: ask the disk again.
        self._directories.discard(directory)
        self._device = None
        self._root_device()

    def _adopt(
        self,
        source: Path,
        final: Path,
        hash_from: int,
        sha256: str | None,
        defer_sync: bool,
        size: int,
    ) -> SpooledFile:
        directory = final.parent
        self._directory(directory)
        try:
            try:
                os.link(source, final)
            except FileNotFoundError:
                if not source.exists():
                    raise
                self._forget(directory)
                self._directory(directory)
                os.link(source, final)
        except FileExistsError as exc:
            raise SpoolCollisionError(f"{final.name} already exists") from exc
        # Linked before the fsync: the file's fsync then commits the new directory entry in the
        # same journal transaction, and the directory's fsync below has nothing left to wait
        # for. A crash in between leaves a name no row refers to (an orphan, whole or partial).
        if sha256 is not None and defer_sync:
            # Hashed while received, synced later: nothing to read or sync here (`size` is
            # the source's, taken before linking; the caller will not change the file).
            return SpooledFile(final, size, sha256, synced=False)
        with source.open("rb") as fh:
            if sha256 is None:
                size, sha256 = hash_data_set(fh, hash_from)
            else:
                size = os.fstat(fh.fileno()).st_size
            if defer_sync:
                return SpooledFile(final, size, sha256, synced=False)
            os.fsync(fh.fileno())
        _fsync_dir(directory)
        return SpooledFile(final, size, sha256)

    def sync(self, spooled: SpooledFile) -> None:
        """Make a file spooled with `defer_sync` durable: its bytes, then its name."""
        if spooled.synced:
            return
        try:
            fd = os.open(spooled.path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            _fsync_dir(spooled.path.parent)
        except OSError as exc:
            if exc.errno in _FULL:
                raise OutOfResources("spool volume is full") from exc
            raise

    def discard(self, path: Path) -> None:
        """Remove a spooled file that no database row refers to."""
        try:
            size = path.stat().st_size
            path.unlink()
        except FileNotFoundError:
            return
        _fsync_dir(path.parent)
        self._settle(0, -size)

    def _reserve(self, nbytes: int) -> None:
        if self.quota_bytes is None:
            return
        with self._lock:
            if self._used is None:
                self._used = _spool_usage(self.root)
            # Reserved before writing so concurrent associations cannot overshoot together.
            if self._used + self._reserved + nbytes > self.quota_bytes:
                raise OutOfResources("spool quota exceeded")
            self._reserved += nbytes

    def _settle(self, reserved: int, stored: int) -> None:
        if self.quota_bytes is None:
            return
        with self._lock:
            self._reserved -= reserved
            if self._used is not None:
                self._used += stored

    def _write(
        self, source: Path | bytes | BinaryIO, final: Path, reservation: list[int], hash_from: int
    ) -> SpooledFile:
        directory = final.parent
        self._directory(directory)
        digest = hashlib.sha256()
        size = 0
        try:
            # Exclusive creation never replaces an existing name: two writers of the same
            # version cannot overwrite each other's bytes.
            try:
                out = final.open("xb")
            except FileNotFoundError:
                self._forget(directory)
                self._directory(directory)
                out = final.open("xb")
        except FileExistsError as exc:
            raise SpoolCollisionError(f"{final.name} already exists") from exc
        try:
            with out:
                for chunk in _chunks(source):
                    start = size
                    size += len(chunk)
                    if size > reservation[0]:
                        # A stream of unknown length grows its reservation as it is written.
                        self._reserve(size - reservation[0])
                        reservation[0] = size
                    digest.update(memoryview(chunk)[max(0, hash_from - start) :])
                    out.write(chunk)
                out.flush()
                # The file's fsync also commits its directory entry on journalling file
                # systems, which leaves the directory's own fsync below with little to do.
                os.fsync(out.fileno())
        except BaseException:
            final.unlink(missing_ok=True)
            raise
        _fsync_dir(directory)
        return SpooledFile(final, size, digest.hexdigest())


def hash_data_set(fh: BinaryIO, hash_from: int) -> tuple[int, str]:
    """The size of the open file and the SHA-256 of its bytes from `hash_from` on."""
    digest = hashlib.sha256()
    size = 0
    while chunk := fh.read(CHUNK_BYTES):
        start = size
        size += len(chunk)
        # A view, not a slice: the data set is hashed without copying the chunk.
        digest.update(memoryview(chunk)[max(0, hash_from - start) :])
    return size, digest.hexdigest()


def _chunks(source: Path | bytes | BinaryIO) -> Iterator[bytes]:
    if isinstance(source, bytes):
        for start in range(0, len(source), CHUNK_BYTES):
            yield source[start : start + CHUNK_BYTES]
        return
    if isinstance(source, Path):
        with source.open("rb") as fh:
            yield from iter(lambda: fh.read(CHUNK_BYTES), b"")
        return
    yield from iter(lambda: source.read(CHUNK_BYTES), b"")
