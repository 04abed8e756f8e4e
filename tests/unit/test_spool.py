"""The spool: durable, never-overwriting writes within a quota."""

from __future__ import annotations

import errno
import hashlib
import io
import os
import shutil
from pathlib import Path

import pytest

from gateway import spool as spool_module
from gateway.domain.errors import OutOfResources
from gateway.spool import Spool, SpoolCollisionError

STUDY = "1.2.826.0.1.3680043.8.498.1"
SOP = "1.2.826.0.1.3680043.8.498.1.1"


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def test_bytes_land_at_the_layout_path_with_size_and_hash(tmp_path: Path) -> None:
    data = b"DICM" * 1000
    spooled = Spool(tmp_path).store_file(data, STUDY, SOP, 1)
    assert spooled.path == tmp_path / STUDY / f"{SOP}.1.dcm"
    assert spooled.path.read_bytes() == data
    assert spooled.size == len(data)
    assert spooled.sha256 == hashlib.sha256(data).hexdigest()
    assert _files(tmp_path) == [spooled.path]  # no temporary file left behind


def test_a_stream_is_copied_in_bounded_chunks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(spool_module, "CHUNK_BYTES", 1000)
    reads: list[int] = []

    class Recording(io.BytesIO):
        def read(self, n: int | None = -1, /) -> bytes:
            reads.append(-1 if n is None else n)
            return super().read(n)

    data = os.urandom(10_500)
    spooled = Spool(tmp_path).store_file(Recording(data), STUDY, SOP, 1)
    assert spooled.path.read_bytes() == data
    assert reads
    assert all(0 < n <= 1000 for n in reads)


def test_a_file_is_copied_unchanged(tmp_path: Path) -> None:
    source = tmp_path / "in.dcm"
    source.write_bytes(os.urandom(3 * 1024 * 1024 + 7))
    spooled = Spool(tmp_path / "spool").store_file(source, STUDY, SOP, 1)
    assert spooled.path.read_bytes() == source.read_bytes()
    assert spooled.size == source.stat().st_size


def test_file_and_directory_are_fsynced_before_store_returns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        log.append("dir-fsync" if os.path.isdir(f"/proc/self/fd/{fd}") else "file-fsync")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    Spool(tmp_path).store_file(b"x" * 100, STUDY, SOP, 1)
    assert log.index("file-fsync") < len(log) - 1
    assert log[-1] == "dir-fsync"


def test_an_existing_version_is_never_overwritten(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    first = spool.store_file(b"first", STUDY, SOP, 1)
    with pytest.raises(SpoolCollisionError):
        spool.store_file(b"second", STUDY, SOP, 1)
    assert first.path.read_bytes() == b"first"
    assert spool.store_file(b"second", STUDY, SOP, 2).path.name == f"{SOP}.2.dcm"


def test_a_failed_write_leaves_no_file(tmp_path: Path) -> None:
    class Broken(io.RawIOBase):
        def read(self, n: int = -1) -> bytes:
            raise OSError(errno.EIO, "read error")

    with pytest.raises(OSError, match="read error"):
        Spool(tmp_path).store_file(Broken(), STUDY, SOP, 1)  # type: ignore[arg-type]
    assert _files(tmp_path) == []


def test_quota_counts_what_is_already_spooled(tmp_path: Path) -> None:
    Spool(tmp_path).store_file(b"a" * 600, STUDY, SOP, 1)
    spool = Spool(tmp_path, quota_bytes=1000)
    with pytest.raises(OutOfResources):
        spool.store_file(b"b" * 500, STUDY, SOP, 2)
    spool.store_file(b"c" * 400, STUDY, SOP, 2)
    assert len(_files(tmp_path)) == 2


def test_quota_bounds_a_stream_of_unknown_length(tmp_path: Path) -> None:
    with pytest.raises(OutOfResources):
        Spool(tmp_path, quota_bytes=1000).store_file(io.BytesIO(b"s" * 5000), STUDY, SOP, 1)
    assert _files(tmp_path) == []


def test_discard_gives_the_quota_back(tmp_path: Path) -> None:
    spool = Spool(tmp_path, quota_bytes=1000)
    spooled = spool.store_file(b"a" * 800, STUDY, SOP, 1)
    spool.discard(spooled.path)
    spool.store_file(b"b" * 800, STUDY, SOP, 2)


def test_full_disk_is_out_of_resources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(OutOfResources):
        Spool(tmp_path, min_free_bytes=1 << 62).store_file(b"x", STUDY, SOP, 1)

    def enospc(_fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", enospc)
    with pytest.raises(OutOfResources):
        Spool(tmp_path).store_file(b"x" * 10, STUDY, SOP, 1)
    assert _files(tmp_path) == []


def test_a_uid_that_is_not_a_uid_cannot_escape_the_root(tmp_path: Path) -> None:
    spooled = Spool(tmp_path / "spool").store_file(b"x", "../../etc", "../passwd", 1)
    assert spooled.path.resolve().is_relative_to((tmp_path / "spool").resolve())
    assert ".." not in spooled.path.name


def test_an_owned_file_on_the_same_volume_is_linked_not_copied(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "received.dcm"
    source.write_bytes(b"meta" + b"data" * 1000)
    log: list[str] = []
    real_fsync, real_link = os.fsync, os.link

    def fsync(fd: int) -> None:
        log.append("dir-fsync" if os.path.isdir(f"/proc/self/fd/{fd}") else "file-fsync")
        real_fsync(fd)

    def link(src: str | Path, dst: str | Path) -> None:
        log.append("link")
        real_link(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "link", link)
    spooled = Spool(tmp_path / "spool").store_file(source, STUDY, SOP, 1, hash_from=4, adopt=True)
    assert spooled.path.stat().st_ino == source.stat().st_ino
    assert spooled.sha256 == hashlib.sha256(b"data" * 1000).hexdigest()
    # Linked first, so the file's fsync also commits the new name; both before any row.
    assert log[-3:] == ["link", "file-fsync", "dir-fsync"]
    source.unlink()  # the receiver deletes its temporary file; the spooled name keeps the bytes
    assert spooled.path.read_bytes() == b"meta" + b"data" * 1000
    copied = Spool(tmp_path / "spool").store_file(spooled.path, STUDY, SOP, 2)
    assert copied.path.stat().st_ino != spooled.path.stat().st_ino


def test_directories_removed_behind_the_spools_back_are_made_again(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    first = spool.store_file(b"a" * 10, STUDY, SOP, 1)
    shutil.rmtree(first.path.parent)  # the study directory, remembered as existing
    source = tmp_path / "spool" / "received.dcm"
    source.write_bytes(b"b" * 10)
    adopted = spool.store_file(source, STUDY, SOP, 2, adopt=True)
    assert adopted.path.read_bytes() == b"b" * 10
    shutil.rmtree(tmp_path / "spool")  # the whole root
    again = spool.store_file(b"c" * 10, STUDY, SOP, 3)
    assert again.path.read_bytes() == b"c" * 10


def test_a_hash_taken_while_receiving_spares_reading_the_file_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "received.dcm"
    source.write_bytes(b"meta" + b"data" * 1000)
    known = hashlib.sha256(b"data" * 1000).hexdigest()
    reads: list[int] = []

    class CountingHash:
        def update(self, data: bytes) -> None:
            reads.append(len(data))

        def hexdigest(self) -> str:
            return "computed"

    monkeypatch.setattr(hashlib, "sha256", CountingHash)
    spooled = Spool(tmp_path / "spool").store_file(
        source, STUDY, SOP, 1, hash_from=4, adopt=True, sha256=known
    )
    assert (spooled.sha256, spooled.size) == (known, 4004)
    assert reads == []
