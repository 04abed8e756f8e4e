"""STOW-RS over a real socket: dicomweb-client as the sender, plain multipart POSTs for the faults.

PS3.18 10.5: 200 all stored; 202 some failed or warned (FailedSOPSequence with FailureReason);
409 none stored; 400 bad syntax; 415 other media types; 413 over the size limit. Stored
instances are listed in ReferencedSOPSequence with their RetrieveURL.
"""

from __future__ import annotations

import asyncio
import io
import os
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import pytest
from aiohttp.test_utils import TestClient, TestServer
from dicomweb_client.api import DICOMwebClient
from pydicom.uid import generate_uid
from sqlalchemy import Engine, select

from gateway.audit.trail import ensure_head
from gateway.auth.issuer import mint_token
from gateway.auth.tokens import TokenValidator
from gateway.ingest import InstanceRecorder
from gateway.listeners.dicomweb import PENDING_SUMMARIES, register_dicomweb
from gateway.listeners.http import build_http_app
from gateway.listeners.rest_audit import attach_audit
from gateway.persistence.db import make_engine
from gateway.persistence.tables import audit_log, instances, metadata
from gateway.review_service import ReviewService
from gateway.settings import HttpSettings, Settings, StorageSettings
from gateway.spool import Spool
from tests.unit.test_assembly import write_dicom

pytestmark = pytest.mark.integration

BOUNDARY = "stow-boundary-1a2b3c"
RELATED = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'


@dataclass
class Gateway:
    """A running HTTP listener with DICOMweb and what it writes to."""

    client: TestClient[Any, Any]
    engine: Engine
    settings: Settings
    spool: Spool

    @property
    def url(self) -> str:
        """The DICOMweb base."""
        return str(self.client.make_url("/dicomweb")).rstrip("/")

    def token(self, role: str = "pacs") -> str:
        """A bearer token of `role`."""
        user = "Device/pacs-1" if role == "pacs" else "Practitioner/dr-1"
        return mint_token(self.settings, role=role, user=user)

    def rows(self) -> list[Any]:
        """Instance rows."""
        with self.engine.connect() as conn:
            return list(conn.execute(select(instances)))

    def audit_text(self) -> str:
        """Every audit record, as one text."""
        with self.engine.connect() as conn:
            return "\n".join(conn.execute(select(audit_log.c.resource)).scalars())

    def written_summaries(self) -> list[str]:
        """The DICOM Instances Transferred records written so far."""
        with self.engine.connect() as conn:
            records = conn.execute(select(audit_log.c.resource)).scalars()
            return [r for r in records if "instances-transferred" in r]

    async def summaries(self, count: int = 1, within: float = 10.0) -> list[str]:
        """The summaries once `count` are written: they follow the response."""
        deadline = time.monotonic() + within
        while len(found := self.written_summaries()) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(found)} of {count} transfer summaries written")
            await asyncio.sleep(0.02)
        return found


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    """A SQLite database with the gateway's tables."""
    engine = make_engine(f"sqlite:///{tmp_path / 'gw.db'}")
    with engine.begin() as conn:
        metadata.create_all(conn)
        ensure_head(conn)
    yield engine
    engine.dispose()


@pytest.fixture
async def gw(engine: Engine, tmp_path: Path) -> AsyncIterator[Gateway]:
    """The HTTP app with a small FHIR body limit (so buffering a STOW body would fail)."""
    settings = Settings(
        storage=StorageSettings(data_dir=tmp_path / "var"),
        http=HttpSettings(
            base_url="http://127.0.0.1:8080",
            max_body_bytes=64 * 1024,
            stow_max_instance_bytes=8 * 1024 * 1024,
        ),
    )
    spool = Spool(settings.storage.spool_dir, 40 * 1024 * 1024, min_free_bytes=0)
    app = build_http_app(
        settings,
        engine,
        ReviewService(engine, settings),
        TokenValidator(settings),
        lambda: {"status": "ready"},
    )
    attach_audit(app)  # reads and searches are audited as in `serve`
    register_dicomweb(app, InstanceRecorder(engine, spool, settings))
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        yield Gateway(client, engine, settings, spool)


def _body(*parts: bytes, content_type: str = "application/dicom") -> bytes:
    out = io.BytesIO()
    for part in parts:
        out.write(f"--{BOUNDARY}\r\nContent-Type: {content_type}\r\n\r\n".encode())
        out.write(part)
        out.write(b"\r\n")
    out.write(f"--{BOUNDARY}--\r\n".encode())
    return out.getvalue()


async def _post(gw: Gateway, body: bytes, path: str = "/dicomweb/studies", **headers: str) -> Any:
    return await gw.client.post(
        path,
        data=body,
        headers={"Authorization": f"Bearer {gw.token()}", "Content-Type": RELATED, **headers},
    )


def _seq(document: dict[str, Any], tag: str) -> list[dict[str, Any]]:
    return list(document.get(tag, {}).get("Value", []))


async def test_dicomweb_client_stores_a_study_and_gets_retrieve_urls(
    gw: Gateway, tmp_path: Path
) -> None:
    study = generate_uid()
    datasets = [pydicom.dcmread(write_dicom(tmp_path / f"{n}.dcm", study)) for n in range(3)]
    client = DICOMwebClient(url=gw.url, headers={"Authorization": f"Bearer {gw.token()}"})
    response = await asyncio.to_thread(client.store_instances, datasets)
    referenced = _seq(response.to_json_dict(), "00081199")
    assert len(referenced) == 3
    for item, ds in zip(referenced, datasets, strict=True):
        assert item["00081155"]["Value"] == [ds.SOPInstanceUID]
        assert item["00081190"]["Value"] == [
            f"http://127.0.0.1:8080/dicomweb/studies/{study}/series/"
            f"{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"
        ]
    assert len(gw.rows()) == 3
    summaries = await gw.summaries()
    assert len(summaries) == 1
    assert "Device/pacs-1" in summaries[0]


async def test_statuses_of_ps3_18(gw: Gateway, tmp_path: Path) -> None:
    study = generate_uid()
    good = write_dicom(tmp_path / "good.dcm", study).read_bytes()
    other = write_dicom(tmp_path / "other.dcm", generate_uid()).read_bytes()
    garbage = b"\x00" * 128 + b"DICM" + b"\xff" * 200

    response = await _post(gw, _body(good), Accept="application/dicom+json")
    assert response.status == 200
    assert response.headers["Content-Type"] == "application/dicom+json"
    response = await _post(gw, _body(good), Accept="application/dicom+xml")
    assert response.status == 406

    # Partly stored: an instance of another study and garbage fail, one new instance is stored.
    second = write_dicom(tmp_path / "second.dcm", study).read_bytes()
    response = await _post(gw, _body(second, other, garbage), f"/dicomweb/studies/{study}")
    assert response.status == 202
    document = await response.json(content_type=None)
    reasons = sorted(item["00081197"]["Value"][0] for item in _seq(document, "00081198"))
    assert reasons == [0xA900, 0xC000]
    assert len(_seq(document, "00081199")) == 1

    # Nothing stored although well formed: 409.
    response = await _post(gw, _body(garbage), f"/dicomweb/studies/{study}")
    assert response.status == 409

    # The same instance again, conflicting content: stored as a new version with a warning.
    changed = pydicom.dcmread(io.BytesIO(good))
    changed.PixelData = bytes(len(changed.PixelData))
    buffer = io.BytesIO()
    changed.save_as(buffer)
    response = await _post(gw, _body(buffer.getvalue()))
    assert response.status == 202
    item = _seq(await response.json(content_type=None), "00081199")[0]
    assert item["00081196"]["Value"] == [0xB000]

    response = await gw.client.post(
        "/dicomweb/studies",
        data=good,
        headers={"Authorization": f"Bearer {gw.token()}", "Content-Type": "application/dicom"},
    )
    assert response.status == 415
    response = await _post(gw, b"--nonsense without a closing boundary")
    assert response.status == 400
    assert len(gw.rows()) == 3


async def test_size_limits_and_a_streamed_body_larger_than_the_buffer_limit(
    gw: Gateway, tmp_path: Path
) -> None:
    path = write_dicom(tmp_path / "big.dcm", generate_uid())
    ds = pydicom.dcmread(path)
    ds.Rows, ds.Columns = 1000, 2048
    ds.PixelData = os.urandom(2048 * 1000)
    ds.save_as(path)
    # 2 MB through an app that refuses bodies over 64 KiB when buffered: the body is streamed.
    response = await _post(gw, _body(path.read_bytes()))
    assert response.status == 200, await response.text()
    ds.PixelData = os.urandom(2048 * 1000 * 5)
    ds.Rows = 5000
    ds.SOPInstanceUID = generate_uid()
    ds.save_as(path)
    response = await _post(gw, _body(path.read_bytes()))
    assert response.status == 413
    assert len(gw.rows()) == 1
    incoming = gw.settings.storage.spool_dir / ".incoming"
    assert list(incoming.iterdir()) == []


async def test_stow_needs_the_pacs_principal(gw: Gateway, tmp_path: Path) -> None:
    body = _body(write_dicom(tmp_path / "a.dcm", generate_uid()).read_bytes())
    response = await gw.client.post(
        "/dicomweb/studies", data=body, headers={"Content-Type": RELATED}
    )
    assert response.status == 401
    response = await gw.client.post(
        "/dicomweb/studies",
        data=body,
        headers={"Content-Type": RELATED, "Authorization": f"Bearer {gw.token('reviewer')}"},
    )
    assert response.status == 403
    assert gw.rows() == []
    assert not gw.client.app[PENDING_SUMMARIES]  # none is on its way either
    assert gw.written_summaries() == []


async def test_a_burst_of_uploads_never_delays_other_requests(
    gw: Gateway, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Token validation, readiness and the FHIR and QIDO handlers run on the event loop's default
    # executor: parts being recorded must not hold its threads (a small pool here, as on 2 cores).
    import threading
    from concurrent.futures import ThreadPoolExecutor

    loop = asyncio.get_running_loop()
    loop.set_default_executor(ThreadPoolExecutor(4))
    release, lock, all_waiting = threading.Event(), threading.Lock(), asyncio.Event()
    recording = [0]
    record = InstanceRecorder.record

    def slow_record(self: InstanceRecorder, *args: Any, **kwargs: Any) -> Any:
        with lock:
            recording[0] += 1
            if recording[0] == 8:
                loop.call_soon_threadsafe(all_waiting.set)
        release.wait(30)  # a slow disk under every part at once
        return record(self, *args, **kwargs)

    monkeypatch.setattr(InstanceRecorder, "record", slow_record)
    study = generate_uid()
    parts = [write_dicom(tmp_path / f"{n}.dcm", study).read_bytes() for n in range(10)]
    headers = {"Content-Type": RELATED, "Authorization": f"Bearer {gw.token()}"}
    upload = asyncio.create_task(
        gw.client.post("/dicomweb/studies", data=_body(*parts), headers=headers)
    )
    await asyncio.wait_for(all_waiting.wait(), 20)
    assert recording[0] == 8  # every part in flight of the request is waiting on the disk
    try:
        ready = await asyncio.wait_for(gw.client.get("/readyz"), 5)
        assert ready.status == 200
        reviewer = {"Authorization": f"Bearer {gw.token('reviewer')}"}
        search = await asyncio.wait_for(gw.client.get("/dicomweb/studies", headers=reviewer), 5)
        assert search.status in (200, 204)
    finally:
        release.set()
    stored = await asyncio.wait_for(upload, 30)
    assert stored.status == 200
    assert len(gw.rows()) == 10


async def test_a_slow_disk_holds_up_its_own_upload_not_the_event_loop(
    gw: Gateway, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A part's bytes are written and hashed on the recording threads: while the disk stalls
    # (3 s here), health checks and other requests are still answered at once.
    from gateway.listeners import stow

    loop = asyncio.get_running_loop()
    writing, stalled_at = asyncio.Event(), [0.0]
    write = stow._IncomingPart.write

    def stalled_write(self: Any, data: bytes | bytearray) -> None:
        stalled_at[0] = time.monotonic()
        loop.call_soon_threadsafe(writing.set)
        time.sleep(3)  # the disk under dirty-page throttling
        write(self, data)

    monkeypatch.setattr(stow._IncomingPart, "write", stalled_write)
    part = write_dicom(tmp_path / "a.dcm", generate_uid()).read_bytes()
    headers = {"Content-Type": RELATED, "Authorization": f"Bearer {gw.token()}"}
    upload = asyncio.create_task(
        gw.client.post("/dicomweb/studies", data=_body(part), headers=headers)
    )
    await asyncio.wait_for(writing.wait(), 10)
    health = await asyncio.wait_for(gw.client.get("/healthz"), 10)
    assert health.status == 200
    assert time.monotonic() - stalled_at[0] < 1.0  # answered during the stall, not after it
    assert not upload.done()
    stored = await asyncio.wait_for(upload, 30)
    assert stored.status == 200
    assert len(gw.rows()) == 1


@pytest.mark.parametrize("write_bytes", [1 << 20, 256], ids=["last-write", "earlier-write"])
async def test_a_part_the_disk_cannot_take_fails_alone_with_a700(
    gw: Gateway, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, write_bytes: int
) -> None:
    import errno

    from gateway.listeners import stow

    monkeypatch.setattr(stow, "WRITE_BYTES", write_bytes)
    study = generate_uid()
    parts = [write_dicom(tmp_path / f"{n}.dcm", study).read_bytes() for n in range(3)]
    assert len(parts[1]) > 256  # with 256-byte writes the failure comes before the part's end
    write = stow._IncomingPart.write
    seen: list[Path] = []  # parts in the order of their first write (writes run concurrently)

    def full_on_the_second_part(self: Any, data: bytes | bytearray) -> None:
        if self.path not in seen:
            seen.append(self.path)
        if seen.index(self.path) == 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        write(self, data)

    monkeypatch.setattr(stow._IncomingPart, "write", full_on_the_second_part)
    response = await _post(gw, _body(*parts))
    assert response.status == 202
    document = await response.json(content_type=None)
    assert [i["00081197"]["Value"][0] for i in _seq(document, "00081198")] == [0xA700]
    assert len(_seq(document, "00081199")) == 2
    assert len(gw.rows()) == 2
    assert not list((gw.settings.storage.spool_dir / ".incoming").glob(".stow-*"))


async def test_parts_with_an_irregular_file_meta_are_read_whole_as_before(
    gw: Gateway, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The meta a client sends is trusted only when group 0002 walks regular up to the data set;
    # otherwise pydicom reads the whole file and the part is stored or refused as it was.
    from gateway.dicom_header import parse_header
    from gateway.listeners import stow
    from tests.unit.test_dicom_header_file_meta import irregular_metas, write_ct

    expected = {
        "regular": None,
        "into-an-element": None,
        "over-the-data-set": None,
        "short-of-the-last-element": None,
        "unknown-vr": 0xC000,
        "syntax-not-ui": None,
        "elements-out-of-order": 0xC000,
        "group-length-of-8-bytes": 0xC000,
        "truncated": 0xC000,
        "oversized": None,
    }
    parsed_with: list[str] = []

    def spy(path: Path, *, data_set_at: int = 0, transfer_syntax: str = "") -> Any:
        parsed_with.append(transfer_syntax)
        return parse_header(path, data_set_at=data_set_at, transfer_syntax=transfer_syntax)

    monkeypatch.setattr(stow, "parse_header", spy)
    for name, reason in expected.items():
        path = write_ct(tmp_path / f"{name}.dcm", "1.2.840.10008.1.2.1")
        data = path.read_bytes()
        if name == "truncated":
            data = data[:200]
        elif name == "oversized":
            path = write_ct(path, "1.2.840.10008.1.2.1", private_information=b"\x01" * 70_000)
            data = path.read_bytes()
        elif name != "regular":
            data = irregular_metas(data)[name]
        parsed_with.clear()
        response = await _post(gw, _body(data))
        document = await response.json(content_type=None)
        failed = [i["00081197"]["Value"][0] for i in _seq(document, "00081198")]
        assert (response.status, failed) == ((200, []) if reason is None else (409, [reason])), name
        assert parsed_with == ["1.2.840.10008.1.2.1" if name == "regular" else ""], name
    assert len(gw.rows()) == 6


async def test_a_part_written_in_short_raw_writes_is_stored_whole(
    gw: Gateway, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A raw write may take fewer bytes than given; every byte of the part must reach its file.
    from gateway.listeners import stow
    from tests.unit.test_part_files import short_writing_open

    monkeypatch.setattr(stow, "open", short_writing_open(61), raising=False)
    path = write_dicom(tmp_path / "short.dcm", generate_uid(), modality="CT")
    response = await _post(gw, _body(path.read_bytes()))
    assert response.status == 200, await response.text()
    [row] = gw.rows()
    stored = await asyncio.to_thread(Path(row.path).read_bytes)
    assert stored == await asyncio.to_thread(path.read_bytes)


async def test_a_large_part_goes_to_disk_while_it_arrives_and_is_stored_whole(
    gw: Gateway, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gateway.listeners import part_files
    from tests.unit.test_dicom_header_file_meta import write_ct

    hints: list[tuple[int, int]] = []
    monkeypatch.setattr(part_files, "_FADVISE", lambda _fd, at, n, _advice: hints.append((at, n)))
    path = write_ct(tmp_path / "large.dcm", "1.2.840.10008.1.2.1", rows=1024)  # 2 MiB of pixels
    response = await _post(gw, _body(path.read_bytes()))
    assert response.status == 200, await response.text()
    [row] = gw.rows()
    assert await asyncio.to_thread(Path(row.path).read_bytes) == path.read_bytes()
    # Handed over in the slices the receiver writes (a MiB or more each), contiguous from the
    # start; the last bytes, under a MiB, are left to the fsync.
    assert hints
    assert [at for at, _ in hints] == [0, *(sum(h) for h in hints[:-1])]
    assert all(n >= part_files.WRITEBACK_BYTES for _, n in hints)
    assert path.stat().st_size - part_files.WRITEBACK_BYTES < sum(hints[-1]) <= path.stat().st_size


async def test_a_part_is_read_while_its_previous_slice_is_written_and_lands_in_order(
    gw: Gateway, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The event loop reads the next slice of a part while a recording thread writes the one
    # before (before, it waited for each write); each slice waits for the one before it.
    from gateway.listeners import stow
    from tests.unit.test_dicom_header_file_meta import write_ct

    write = stow._IncomingPart.write
    read_meanwhile: list[int] = []

    def slow_write(self: Any, data: bytes | bytearray) -> None:
        if len(data) >= stow.WRITE_BYTES:  # a slice, not the part's last bytes
            time.sleep(0.1)
            read_meanwhile.append(len(self.pending))  # what arrived during the write
        write(self, data)

    monkeypatch.setattr(stow._IncomingPart, "write", slow_write)
    monkeypatch.setattr(stow, "WRITE_BYTES", 256 * 1024)
    path = write_ct(tmp_path / "large.dcm", "1.2.840.10008.1.2.1", rows=1024)  # 2 MiB of pixels
    response = await _post(gw, _body(path.read_bytes()))
    assert response.status == 200, await response.text()
    [row] = gw.rows()
    assert await asyncio.to_thread(Path(row.path).read_bytes) == path.read_bytes()
    assert len(read_meanwhile) >= 4
    assert max(read_meanwhile) > 0


async def test_a_resend_differing_where_a_lying_group_length_points_is_a_new_version(
    gw: Gateway, tmp_path: Path
) -> None:
    # The group length of both counts the first data-set element (Specific Character Set) into
    # the meta; the identity hash used to start after it, and the resend, whose patient name
    # now reads otherwise, passed for a duplicate of the first.
    from tests.unit.test_dicom_header_file_meta import irregular_metas, write_ct

    path = write_ct(tmp_path / "lying.dcm", "1.2.840.10008.1.2.1")
    first = irregular_metas(path.read_bytes())["over-the-data-set"]
    second = first.replace(b"ISO_IR 100", b"ISO_IR 192", 1)
    assert second != first
    for body, status in ((first, 200), (first, 200), (second, 202)):
        response = await _post(gw, _body(body))
        assert response.status == status, await response.text()
    assert sorted(row.version for row in gw.rows()) == [1, 2]
