"""C-STORE faults with real peers: truncated streams, wrong SOP class, a full spool, resends, an
aborted association, dcmsend, DICOM TLS with storescu/echoscu, and the conformance tables.

The listener runs in this process on a free port of 127.0.0.1; the peers are dcmtk and pynetdicom.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, _config, build_context
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import decode, encode
from pynetdicom.pdu import A_ASSOCIATE_RQ, P_DATA_TF
from pynetdicom.pdu_primitives import A_ASSOCIATE, MaximumLengthNotification
from sqlalchemy import Engine, select

from gateway.audit.trail import ensure_head
from gateway.dicom_header import data_set_offset
from gateway.dicom_services import STORAGE_SOP_CLASSES, TRANSFER_SYNTAXES
from gateway.ingest import InstanceRecorder
from gateway.listeners.dimse import DimseListener
from gateway.persistence.db import make_engine
from gateway.persistence.tables import audit_log, instances, metadata
from gateway.settings import DicomSettings, Settings, StorageSettings
from gateway.spool import Spool
from tests.unit.test_assembly import write_dicom

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("storescu") is None, reason="dcmtk is not installed"),
]

HOST = "127.0.0.1"
AE_TITLE = "HITLGW"
DX = "1.2.840.10008.5.1.4.1.1.1.1"
CT = "1.2.840.10008.5.1.4.1.1.2"


@dataclass
class Listener:
    """A running SCP and what it writes to."""

    port: int
    engine: Engine
    spool_dir: Path
    settle: Callable[[], None]

    def rows(self) -> list[dict[str, object]]:
        """Instance rows, once every instance answered so far is committed."""
        # A C-STORE is answered before its commit (docs/ingest.md): reading right after the
        # sender returns could otherwise miss the last row.
        self.settle()
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(select(instances))]

    def audit(self) -> list[dict[str, object]]:
        """Every audit resource."""
        with self.engine.connect() as conn:
            return [json.loads(r) for r in conn.execute(select(audit_log.c.resource)).scalars()]

    def spooled(self) -> list[Path]:
        """Every file under the spool, temporary ones included."""
        return sorted(p for p in self.spool_dir.rglob("*") if p.is_file())


def _wait(predicate: Callable[[], object], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.02)


def _listening(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.fixture
def start_listener(tmp_path: Path) -> Iterator[Callable[..., Listener]]:
    """Starts listeners with the given storage quota and DICOM settings; stops them after."""
    running: list[tuple[DimseListener, Engine]] = []

    def start(quota: int | None = None, **dicom: object) -> Listener:
        data = tmp_path / f"var{len(running)}"
        settings = Settings(
            dicom=DicomSettings(port=0, host=HOST, ae_title=AE_TITLE, **dicom),  # type: ignore[arg-type]
            storage=StorageSettings(data_dir=data),
        )
        engine = make_engine(f"sqlite:///{tmp_path / f'gw{len(running)}.db'}")
        with engine.begin() as conn:
            metadata.create_all(conn)
            ensure_head(conn)
        spool = Spool(settings.storage.spool_dir, quota, min_free_bytes=0)
        recorder = InstanceRecorder(engine, spool, settings)
        listener = DimseListener(settings, recorder)
        listener.start()
        running.append((listener, engine))
        _wait(lambda: _listening(listener.port))
        return Listener(listener.port, engine, settings.storage.spool_dir, recorder.settle)

    yield start
    for listener, engine in running:
        listener.stop()
        engine.dispose()


def _dcmtk(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TCP_NODELAY": "1"}
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=60, check=False)


def _associate(port: int, *contexts: str) -> object:
    ae = AE(ae_title="PYSCU")
    for sop_class in contexts or (DX,):
        ae.add_requested_context(sop_class, ExplicitVRLittleEndian)
    assoc = ae.associate(HOST, port, ae_title=AE_TITLE)
    assert assoc.is_established
    return assoc


def test_a_truncated_stream_leaves_nothing_behind(
    start_listener: Callable[..., Listener], tmp_path: Path
) -> None:
    gw = start_listener()
    path = write_dicom(tmp_path / "big.dcm", generate_uid())
    ds = pydicom.dcmread(path)
    ds.PixelData = os.urandom(2_000_000)
    ds.Rows, ds.Columns = 1000, 2000
    ds.save_as(path, implicit_vr=False, little_endian=True)
    assoc: object = _associate(gw.port)
    request = C_STORE()
    request.MessageID = 1
    request.AffectedSOPClassUID = DX
    request.AffectedSOPInstanceUID = ds.SOPInstanceUID
    request.Priority = 2
    # The data set bytes after the file meta, as a C-STORE carries them.
    request.DataSet = io.BytesIO(_data_set(ds))
    message = C_STORE_RQ()
    message.primitive_to_message(request)
    context_id = assoc.accepted_contexts[0].context_id  # type: ignore[attr-defined]
    pdus = []
    for primitive in message.encode_msg(context_id, 16384):
        pdu = P_DATA_TF()
        pdu.from_primitive(primitive)
        pdus.append(pdu.encode())
    raw = assoc.dul.socket.socket  # type: ignore[attr-defined]
    # Half the message, then the connection drops as a crashed sender's would.
    for data in pdus[: len(pdus) // 2]:
        raw.sendall(data)
    raw.shutdown(socket.SHUT_RDWR)
    raw.close()
    assert gw.rows() == []
    # The listener is unharmed: the next sender is served, and only its instance is stored.
    sent = _dcmtk("storescu", "-aec", AE_TITLE, HOST, str(gw.port), str(path))
    assert sent.returncode == 0, sent.stdout + sent.stderr
    assert [r["sop_instance_uid"] for r in gw.rows()] == [ds.SOPInstanceUID]
    assert [p.name.startswith(".") for p in gw.spooled()] == [False]


def test_an_instance_written_in_short_raw_writes_is_stored_whole(
    start_listener: Callable[..., Listener], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A raw write may take fewer bytes than given; the part file must still hold every byte
    # the digest covered (before, the rest of each short write was silently lost).
    from gateway.listeners import dicom_association
    from tests.unit.test_part_files import short_writing_open

    monkeypatch.setattr(dicom_association, "open", short_writing_open(61), raising=False)
    gw = start_listener()
    path = write_dicom(tmp_path / "short.dcm", generate_uid(), modality="CT")
    sent = _dcmtk("storescu", "-aec", AE_TITLE, HOST, str(gw.port), str(path))
    assert sent.returncode == 0, sent.stdout + sent.stderr
    [row] = gw.rows()
    stored = Path(str(row["path"])).read_bytes()
    data_set = stored[data_set_offset(Path(str(row["path"]))) :]
    assert data_set == _data_set(pydicom.dcmread(path))
    assert row["sha256"] == hashlib.sha256(data_set).hexdigest()


def test_a_large_instance_goes_to_disk_while_it_arrives_and_is_stored_whole(
    start_listener: Callable[..., Listener], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Its bytes are handed to the disk a MiB at a time behind the receiver, so the fsync after
    # the last byte has little left to write; what is stored is the data set as sent.
    from gateway.listeners import part_files
    from tests.unit.test_dicom_header_file_meta import write_ct

    hints: list[tuple[int, int]] = []
    monkeypatch.setattr(part_files, "_FADVISE", lambda _fd, at, n, _advice: hints.append((at, n)))
    gw = start_listener()
    path = write_ct(tmp_path / "large.dcm", "1.2.840.10008.1.2.1", rows=1024)  # 2 MiB of pixels
    sent = _dcmtk("storescu", "-aec", AE_TITLE, HOST, str(gw.port), str(path))
    assert sent.returncode == 0, sent.stdout + sent.stderr
    [row] = gw.rows()
    stored = Path(str(row["path"])).read_bytes()
    assert stored[data_set_offset(Path(str(row["path"]))) :] == _data_set(pydicom.dcmread(path))
    assert len(hints) == 2
    assert [at for at, _ in hints] == [0, sum(hints[0])]
    assert all(n >= part_files.WRITEBACK_BYTES for _, n in hints)
    assert sum(hints[-1]) <= len(stored)


def test_a_receiving_directory_removed_between_data_sets_is_made_again(
    start_listener: Callable[..., Listener], tmp_path: Path
) -> None:
    # The directory received data sets are written to is made once, not per data set; when
    # something removes it (a clean-up of the spool), the next data set makes it again.
    gw = start_listener()
    study = generate_uid()
    for n in range(3):
        path = write_dicom(tmp_path / f"{n}.dcm", study, modality="CT")
        sent = _dcmtk("storescu", "-aec", AE_TITLE, HOST, str(gw.port), str(path))
        assert sent.returncode == 0, sent.stdout + sent.stderr
        shutil.rmtree(gw.spool_dir / ".incoming")
    assert len(gw.rows()) == 3
    assert all(Path(str(row["path"])).is_file() for row in gw.rows())


def _data_set(ds: pydicom.Dataset) -> bytes:
    out = io.BytesIO()
    pydicom.dcmwrite(out, ds, enforce_file_format=False, implicit_vr=False, little_endian=True)
    data = out.getvalue()
    # dcmwrite without file meta still writes it when ds.file_meta exists; cut it.
    if data[128:132] == b"DICM":
        return data[144 + int.from_bytes(data[140:144], "little") :]
    return data


def test_a_data_set_of_another_sop_class_gets_a900(
    start_listener: Callable[..., Listener], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gw = start_listener()
    ct = write_dicom(tmp_path / "ct.dcm", generate_uid(), modality="CT")
    ds = pydicom.dcmread(ct)
    # Sent under DX (from the file meta) while the data set says CT Image Storage.
    ds.file_meta.MediaStorageSOPClassUID = UID(DX)
    ds.save_as(ct)
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    assoc: object = _associate(gw.port, DX, CT)
    try:
        status = assoc.send_c_store(ct)  # type: ignore[attr-defined]
    finally:
        assoc.release()  # type: ignore[attr-defined]
    assert status.Status == 0xA900
    assert gw.rows() == []
    _wait(lambda: any("0xA900" in json.dumps(d) for d in gw.audit()))


def test_an_unlisted_sop_class_is_refused_at_negotiation(
    start_listener: Callable[..., Listener],
) -> None:
    gw = start_listener()
    ae = AE(ae_title="PYSCU")
    ae.add_requested_context("1.2.840.10008.5.1.4.1.1.88.11", ExplicitVRLittleEndian)  # Basic SR
    ae.add_requested_context(DX, "1.2.840.10008.1.2.2")  # explicit big endian: not listed
    ae.add_requested_context(DX, ExplicitVRLittleEndian)
    assoc = ae.associate(HOST, gw.port, ae_title=AE_TITLE)
    try:
        accepted = {(c.abstract_syntax, c.transfer_syntax[0]) for c in assoc.accepted_contexts}
    finally:
        assoc.release()
    assert accepted == {(DX, ExplicitVRLittleEndian)}


def test_a_full_spool_gets_a700_and_stores_nothing(
    start_listener: Callable[..., Listener], tmp_path: Path
) -> None:
    gw = start_listener(quota=1500)
    study = generate_uid()
    first, second = (write_dicom(tmp_path / f"{n}.dcm", study) for n in "ab")
    result = _dcmtk("storescu", "-v", "-aet", "STORESCU", "-aec", AE_TITLE, HOST, str(gw.port),
                    str(first), str(second))  # fmt: skip
    assert "Received Store Response (Refused: OutOfResources)" in result.stdout + result.stderr
    assert len(gw.rows()) == 1
    assert len([p for p in gw.spooled() if p.suffix == ".dcm"]) == 1
    _wait(lambda: any("0xA700" in json.dumps(d) for d in gw.audit()))


def test_resends_identical_then_conflicting_and_an_aborted_association(
    start_listener: Callable[..., Listener], tmp_path: Path
) -> None:
    gw = start_listener()
    study, sop = generate_uid(), generate_uid()
    original = write_dicom(tmp_path / "a.dcm", study, sop_uid=sop)
    changed = write_dicom(tmp_path / "b.dcm", study, sop_uid=sop, pixel_seed=9)
    others = [write_dicom(tmp_path / f"o{n}.dcm", study) for n in range(3)]
    assoc: object = _associate(gw.port)
    statuses = [
        assoc.send_c_store(pydicom.dcmread(p)).Status  # type: ignore[attr-defined]
        for p in (original, original, changed, *others[:2])
    ]
    assoc.abort()  # type: ignore[attr-defined]
    assert statuses == [0x0000, 0x0000, 0xB000, 0x0000, 0x0000]
    rows = gw.rows()
    assert sorted((r["sop_instance_uid"] == sop, r["version"]) for r in rows) == [
        (False, 1),
        (False, 1),
        (True, 1),
        (True, 2),
    ]

    def summary() -> dict[str, object] | None:
        found = [d for d in gw.audit() if "instances-transferred" in json.dumps(d)]
        return found[0] if found else None

    _wait(summary)
    text = json.dumps(summary())
    for fragment in ('"count-duplicate"', '"count-new-version"', '"count-stored"', "PYSCU"):
        assert fragment in text
    # The sender goes on after the abort; the study simply grows.
    sent = _dcmtk("dcmsend", "-aet", "DCMSEND", "-aec", AE_TITLE, HOST, str(gw.port),
                  str(others[2]))  # fmt: skip
    assert sent.returncode == 0, sent.stdout + sent.stderr
    assert len(gw.rows()) == 5


def _make_certificates(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "scp.pem", directory / "scp.key"
    done = subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return cert, key


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
def test_storescu_and_echoscu_over_dicom_tls(
    start_listener: Callable[..., Listener], tmp_path: Path
) -> None:
    cert, key = _make_certificates(tmp_path)
    gw = start_listener(tls_certificate=str(cert), tls_private_key=str(key))
    tls = ["+tls", str(key), str(cert), "+cf", str(cert), "-aec", AE_TITLE]
    echo = _dcmtk("echoscu", *tls, HOST, str(gw.port))
    assert echo.returncode == 0, echo.stdout + echo.stderr
    path = write_dicom(tmp_path / "tls.dcm", generate_uid())
    sent = _dcmtk("storescu", *tls, HOST, str(gw.port), str(path))
    assert sent.returncode == 0, sent.stdout + sent.stderr
    assert len(gw.rows()) == 1
    # Plain DICOM against the TLS port fails: nothing is accepted unencrypted.
    plain = _dcmtk("echoscu", "-aec", AE_TITLE, HOST, str(gw.port))
    assert plain.returncode != 0


def test_every_listed_sop_class_and_transfer_syntax_is_accepted(
    start_listener: Callable[..., Listener],
) -> None:
    gw = start_listener()
    offered = [(s, t) for s in STORAGE_SOP_CLASSES for t in TRANSFER_SYNTAXES]
    accepted: set[tuple[str, str]] = set()
    # A presentation context list holds at most 128 entries: offer them in slices.
    for start in range(0, len(offered), 120):
        ae = AE(ae_title="PYSCU")
        ae.requested_contexts = [build_context(s, t) for s, t in offered[start : start + 120]]
        assoc = ae.associate(HOST, gw.port, ae_title=AE_TITLE)
        assert assoc.is_established
        accepted |= {
            (str(c.abstract_syntax), str(c.transfer_syntax[0])) for c in assoc.accepted_contexts
        }
        assoc.release()
    assert accepted == set(offered)


def test_concurrent_associations_are_all_served(
    start_listener: Callable[..., Listener], tmp_path: Path
) -> None:
    gw = start_listener(maximum_associations=8)
    study = generate_uid()
    batches = [[write_dicom(tmp_path / f"{a}-{n}.dcm", study) for n in range(5)] for a in range(4)]
    env = {**os.environ, "TCP_NODELAY": "1"}
    senders = [
        subprocess.Popen(
            ["storescu", "-aet", f"MOD{a}", "-aec", AE_TITLE, HOST, str(gw.port), *map(str, batch)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for a, batch in enumerate(batches)
    ]
    outputs = [s.communicate(timeout=60)[0] for s in senders]
    assert [s.returncode for s in senders] == [0, 0, 0, 0], outputs
    assert len(gw.rows()) == 20

    def summaries() -> list[dict[str, object]]:
        return [d for d in gw.audit() if "instances-transferred" in json.dumps(d)]

    _wait(lambda: len(summaries()) == 4)


def test_a_bare_tcp_probe_gives_its_association_slot_back(
    start_listener: Callable[..., Listener],
) -> None:
    gw = start_listener(maximum_associations=1, acse_timeout_seconds=0.5)

    def echo() -> bool:
        return _dcmtk("echoscu", "-aec", AE_TITLE, HOST, str(gw.port)).returncode == 0

    _wait(echo, timeout=5)  # the fixture's own readiness probe has given its slot back
    with socket.create_connection((HOST, gw.port)):
        pass  # a load balancer's health check: connect, close at once, never associate
    _wait(echo, timeout=2)  # ...gives its slot back as soon as it closes
    with socket.create_connection((HOST, gw.port)) as silent:
        time.sleep(0.1)
        assert not echo()  # a connection that stays silent holds the only slot...
        # ...until the ARTIM bound (0.5 s here), then it is closed and the slot is free.
        _wait(echo, timeout=5)
        assert silent.recv(1) == b""


def _raw_associate(port: int, *contexts: tuple[str, str]) -> tuple[socket.socket, bytes]:
    """Associate over a plain socket with pynetdicom's encoder; returns it and the answer PDU."""
    primitive = A_ASSOCIATE()
    primitive.application_context_name = "1.2.840.10008.3.1.1.1"
    primitive.calling_ae_title, primitive.called_ae_title = "RAWSCU", AE_TITLE
    proposed = [build_context(s, t) for s, t in contexts]
    for n, context in enumerate(proposed):
        context.context_id = 2 * n + 1
    primitive.presentation_context_definition_list = proposed
    length = MaximumLengthNotification()
    length.maximum_length_received = 16384
    primitive.user_information = [length]
    rq = A_ASSOCIATE_RQ()
    rq.from_primitive(primitive)
    sock = socket.create_connection((HOST, port), timeout=5)
    sock.sendall(rq.encode())
    return sock, _read_pdu(sock)


def _read_pdu(sock: socket.socket) -> bytes:
    head = b""
    while len(head) < 6:
        chunk = sock.recv(6 - len(head))
        if not chunk:
            return head
        head += chunk
    body = b""
    length = int.from_bytes(head[2:6], "big")
    while len(body) < length:
        chunk = sock.recv(length - len(body))
        if not chunk:
            break
        body += chunk
    return head + body


def _command_pdu(context_id: int, command_field: int, sop_class: str) -> bytes:
    command = pydicom.Dataset()
    command.CommandGroupLength = 0
    command.AffectedSOPClassUID = sop_class
    command.CommandField = command_field
    command.MessageID = 5
    command.CommandDataSetType = 0x0101
    raw = encode(command, True, True)
    assert raw is not None
    pdv = (len(raw) + 2).to_bytes(4, "big") + bytes((context_id, 0x03)) + raw
    return b"\x04\x00" + len(pdv).to_bytes(4, "big") + pdv


def test_protocol_violations_are_aborted_and_the_listener_keeps_serving(
    start_listener: Callable[..., Listener],
) -> None:
    gw = start_listener()
    # Not a DICOM PDU at all (a stray HTTP request): answered with an A-ABORT, then closed.
    with socket.create_connection((HOST, gw.port), timeout=5) as stray:
        stray.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert _read_pdu(stray)[:1] == b"\x07"
        assert stray.recv(1) == b""
    # A message on a presentation context that was never accepted.
    sock, answer = _raw_associate(gw.port, (DX, ExplicitVRLittleEndian))
    with sock:
        assert answer[:1] == b"\x02"  # A-ASSOCIATE-AC
        sock.sendall(_command_pdu(99, 0x0030, "1.2.840.10008.1.1"))
        assert _read_pdu(sock)[:1] == b"\x07"
    # A command fragment far larger than any command set: refused before it is read.
    sock, answer = _raw_associate(gw.port, (DX, ExplicitVRLittleEndian))
    with sock:
        assert answer[:1] == b"\x02"
        size = 64 * 1024 * 1024
        pdv_header = (size + 2).to_bytes(4, "big") + bytes((1, 0x03))
        sock.sendall(b"\x04\x00" + (size + 6).to_bytes(4, "big") + pdv_header + b"\x00" * 1024)
        assert _read_pdu(sock)[:1] == b"\x07"
    assert _dcmtk("echoscu", "-aec", AE_TITLE, HOST, str(gw.port)).returncode == 0
    assert gw.rows() == []


def test_an_operation_the_scp_does_not_offer_gets_0211(
    start_listener: Callable[..., Listener],
) -> None:
    gw = start_listener()
    sock, answer = _raw_associate(gw.port, ("1.2.840.10008.1.1", "1.2.840.10008.1.2"))
    with sock:
        assert answer[:1] == b"\x02"
        sock.sendall(_command_pdu(1, 0x0020, "1.2.840.10008.1.1"))  # a C-FIND-RQ
        reply = _read_pdu(sock)
        assert reply[:1] == b"\x04"
        response = decode(io.BytesIO(reply[12:]), True, True)
        assert (response.CommandField, response.Status) == (0x8020, 0x0211)
        assert response.MessageIDBeingRespondedTo == 5
        sock.sendall(b"\x05\x00\x00\x00\x00\x04\x00\x00\x00\x00")  # A-RELEASE-RQ
        assert _read_pdu(sock)[:1] == b"\x06"  # A-RELEASE-RP


def test_a_silent_association_is_closed_after_the_idle_timeout(
    start_listener: Callable[..., Listener],
) -> None:
    gw = start_listener(idle_timeout_seconds=0.5)
    sock, answer = _raw_associate(gw.port, (DX, ExplicitVRLittleEndian))
    with sock:
        assert answer[:1] == b"\x02"
        started = time.monotonic()
        assert _read_pdu(sock)[:1] in (b"", b"\x07")
        assert 0.3 < time.monotonic() - started < 5


def _store_pdus(context_id: int, sop_class: str, data_set: bytes | None) -> bytes:
    command = pydicom.Dataset()
    command.CommandGroupLength = 0
    command.AffectedSOPClassUID = sop_class
    command.CommandField = 0x0001
    command.MessageID = 9
    command.Priority = 0
    command.CommandDataSetType = 0x0101 if data_set is None else 0x0001
    command.AffectedSOPInstanceUID = generate_uid()
    raw = encode(command, True, True)
    assert raw is not None
    out = b""
    for control, value in [(0x03, raw)] + ([] if data_set is None else [(0x02, data_set)]):
        pdv = (len(value) + 2).to_bytes(4, "big") + bytes((context_id, control)) + value
        out += b"\x04\x00" + len(pdv).to_bytes(4, "big") + pdv
    return out


def _status_of(reply: bytes) -> int:
    assert reply[:1] == b"\x04"
    return int(decode(io.BytesIO(reply[12:]), True, True).Status)


def test_a_store_on_another_context_or_without_a_data_set_is_refused(
    start_listener: Callable[..., Listener], tmp_path: Path
) -> None:
    gw = start_listener()
    path = write_dicom(tmp_path / "dx.dcm", generate_uid())
    data_set = _data_set(pydicom.dcmread(path))
    sock, answer = _raw_associate(
        gw.port, ("1.2.840.10008.1.1", "1.2.840.10008.1.2"), (DX, "1.2.840.10008.1.2")
    )
    with sock:
        assert answer[:1] == b"\x02"
        # A DX instance on the Verification context: 0x0122, audited, nothing stored.
        sock.sendall(_store_pdus(1, DX, data_set))
        assert _status_of(_read_pdu(sock)) == 0x0122
        # A C-STORE whose command says it carries no data set: 0xC000.
        sock.sendall(_store_pdus(3, DX, None))
        assert _status_of(_read_pdu(sock)) == 0xC000
    assert gw.rows() == []
    assert any("0x0122" in json.dumps(record) for record in gw.audit())


def _closed_past_the_cap(port: int, settle: float = 0.0) -> float:
    """Hold the cap's connections (one association allowed: 2 * 1 + 8), then open one more;
    the seconds until the listener closed that one."""
    held = [socket.create_connection((HOST, port), timeout=10) for _ in range(2 * 1 + 8)]
    try:
        time.sleep(settle)
        with socket.create_connection((HOST, port), timeout=10) as extra:
            started = time.monotonic()
            assert extra.recv(1) == b""
            return time.monotonic() - started
    finally:
        for sock in held:
            sock.close()


def test_a_flood_of_connections_does_not_become_a_flood_of_threads(
    start_listener: Callable[..., Listener],
) -> None:
    gw = start_listener(maximum_associations=1, acse_timeout_seconds=3)
    # Every held connection is being served (waiting for its request) after 0.3 s; the one past
    # the cap is closed at once, long before the 3 s ARTIM.
    assert _closed_past_the_cap(gw.port, settle=0.3) < 2
    _wait(lambda: _dcmtk("echoscu", "-aec", AE_TITLE, HOST, str(gw.port)).returncode == 0)


def test_a_data_set_split_over_many_small_pdus_is_stored_unchanged(
    start_listener: Callable[..., Listener], tmp_path: Path
) -> None:
    gw = start_listener()
    path = write_dicom(tmp_path / "dx.dcm", generate_uid())
    ds = pydicom.dcmread(path)
    ds.PixelData = os.urandom(256 * 512)
    ds.Rows, ds.Columns = 256, 256
    ds.save_as(path, implicit_vr=False, little_endian=True)
    # 4 KiB PDUs: the command and every data fragment arrive in PDUs of their own.
    sent = _dcmtk("storescu", "--max-send-pdu", "4096", "-aec", AE_TITLE, HOST, str(gw.port),
                  str(path))  # fmt: skip
    assert sent.returncode == 0, sent.stdout + sent.stderr
    (row,) = gw.rows()
    stored = Path(str(row["path"]))
    source_bytes = path.read_bytes()[data_set_offset(path) :]
    assert stored.read_bytes()[data_set_offset(stored) :] == source_bytes


def test_connections_accepted_faster_than_their_threads_start_still_count_against_the_cap(
    start_listener: Callable[..., Listener], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A burst on a busy machine: the acceptor takes connections before their threads run. They
    # count from their accept, so the one past the cap is closed at once, not served.
    from gateway.listeners.dicom_server import DicomServer

    serve = DicomServer._serve

    def slow_to_start(self: DicomServer, conn: socket.socket, over: bool) -> None:
        time.sleep(1.5)
        serve(self, conn, over)

    monkeypatch.setattr(DicomServer, "_serve", slow_to_start)
    gw = start_listener(maximum_associations=1, acse_timeout_seconds=3)
    assert _closed_past_the_cap(gw.port) < 1.0  # refused, not served after its thread
