"""The DIMSE listener over a real socket with real peers: dcmtk storescu/echoscu and pynetdicom."""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import struct
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, _config
from sqlalchemy import Engine, select

from gateway.audit.trail import ensure_head
from gateway.dicom_header import data_set_offset
from gateway.dicom_services import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from gateway.ingest import InstanceRecorder, parse_header
from gateway.listeners.dicom_pdu import encode_part10_header
from gateway.listeners.dimse import DimseListener
from gateway.persistence.db import make_engine
from gateway.persistence.tables import audit_log, instances, metadata, studies
from gateway.settings import DicomSettings, Settings, StorageSettings
from gateway.spool import Spool

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("storescu") is None, reason="dcmtk is not installed"),
]

AE_TITLE = "HITLGW"
DX_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.1.1"
HOST = "127.0.0.1"


@dataclass
class Gateway:
    """A running listener and what it writes to."""

    port: int
    engine: Engine
    spool_dir: Path
    settle: Callable[[], None]  # returns once every instance answered so far is committed


def _wait_until_listening(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((HOST, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Gateway]:
    """The DIMSE listener on a free port of 127.0.0.1 with SQLite and a temporary data dir."""
    yield from _gateway(tmp_path)


@pytest.fixture
def strict_gateway(tmp_path: Path) -> Iterator[Gateway]:
    """The same listener, refusing associations addressed to another AE title."""
    yield from _gateway(tmp_path / "strict", check_called_ae_title=True)


def _gateway(tmp_path: Path, **dicom: Any) -> Iterator[Gateway]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    settings = Settings(
        dicom=DicomSettings(
            port=0,
            host=HOST,
            ae_title=AE_TITLE,
            allowed_calling_aes=("STORESCU", "ECHOSCU", "PYSCU"),
            **dicom,
        ),
        storage=StorageSettings(data_dir=tmp_path / "var"),
    )
    engine = make_engine(f"sqlite:///{tmp_path / 'gateway.db'}")
    with engine.begin() as conn:
        metadata.create_all(conn)
        ensure_head(conn)
    recorder = InstanceRecorder(engine, Spool(settings.storage.spool_dir), settings)
    listener = DimseListener(settings, recorder)
    listener.start()
    try:
        _wait_until_listening(listener.port)
        yield Gateway(listener.port, engine, settings.storage.spool_dir, recorder.settle)
    finally:
        listener.stop()
        engine.dispose()


def _dx_file(path: Path) -> Path:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(DX_SOP_CLASS)
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = DX_SOP_CLASS
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "DX"
    ds.PatientID = "PAT-7"
    ds.PatientName = "Test^Seven"
    ds.AccessionNumber = "ACC-7"
    ds.Rows = ds.Columns = 20
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.SamplesPerPixel = 1
    ds.PixelRepresentation = 0
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelData = bytes(i % 251 for i in range(400))
    ds.save_as(path, enforce_file_format=True)
    return path


def _data_set_bytes(part10: bytes) -> bytes:
    """The bytes after the file meta group (PS3.10 7.1: preamble, DICM, group 0002)."""
    assert part10[128:132] == b"DICM"
    # (0002,0000) UL in explicit VR little endian: tag 4, VR 2, length 2, then the value.
    (group_length,) = struct.unpack("<I", part10[140:144])
    return part10[144 + group_length :]


def _dcmtk(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TCP_NODELAY": "1"}  # dcmtk leaves Nagle on otherwise
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=60, check=False)


def test_storescu_instance_is_spooled_unchanged_and_recorded(
    gateway: Gateway, tmp_path: Path
) -> None:
    source = _dx_file(tmp_path / "dx.dcm")
    sent = pydicom.dcmread(source)
    result = _dcmtk(
        "storescu", "-v", "-aet", "STORESCU", "-aec", AE_TITLE, HOST, str(gateway.port), str(source)
    )
    assert result.returncode == 0, result.stderr
    assert "Received Store Response (Success)" in result.stdout + result.stderr
    gateway.settle()  # answered before its commit
    with gateway.engine.connect() as conn:
        row = conn.execute(select(instances)).one()
        study = conn.execute(select(studies)).one()
    assert row.sop_instance_uid == sent.SOPInstanceUID
    assert (row.calling_ae, row.transfer_syntax_uid) == ("STORESCU", ExplicitVRLittleEndian)
    assert (study.state, study.patient_id, study.accession_number) == (
        "receiving",
        "PAT-7",
        "ACC-7",
    )
    spooled = Path(row.path)
    assert spooled.is_relative_to(gateway.spool_dir)
    stored = spooled.read_bytes()
    assert _data_set_bytes(stored) == _data_set_bytes(source.read_bytes())
    assert pydicom.dcmread(spooled).file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    # Hashed while it arrived, exactly as the spool hashes a file (the data set after the meta).
    assert row.sha256 == hashlib.sha256(stored[data_set_offset(spooled) :]).hexdigest()


def test_echoscu_gets_success(gateway: Gateway) -> None:
    result = _dcmtk("echoscu", "-aet", "ECHOSCU", "-aec", AE_TITLE, HOST, str(gateway.port))
    assert result.returncode == 0, result.stderr


def test_a_data_set_that_cannot_be_understood_gets_c000(
    gateway: Gateway, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    garbage = tmp_path / "garbage.dcm"
    meta = _dx_file(tmp_path / "meta.dcm").read_bytes()
    garbage.write_bytes(meta[: 144 + struct.unpack("<I", meta[140:144])[0]] + b"\xff" * 512)
    # Sent from the file as is, so the SCP receives the broken data set bytes unchanged.
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    ae = AE(ae_title="PYSCU")
    ae.add_requested_context(DX_SOP_CLASS, ExplicitVRLittleEndian)
    assoc = ae.associate(HOST, gateway.port, ae_title=AE_TITLE)
    assert assoc.is_established
    try:
        status = assoc.send_c_store(garbage)
    finally:
        assoc.release()
    assert status.Status == 0xC000
    with gateway.engine.connect() as conn:
        assert conn.execute(select(instances)).first() is None
        audit = conn.execute(select(audit_log.c.resource)).scalars().all()
    assert any("0xC000" in text for text in audit)


def test_a_calling_ae_outside_the_allowlist_is_rejected_and_audited(gateway: Gateway) -> None:
    result = _dcmtk("echoscu", "-aet", "INTRUDER", "-aec", AE_TITLE, HOST, str(gateway.port))
    assert result.returncode != 0
    assert "Rejected" in result.stdout + result.stderr
    deadline = time.monotonic() + 10
    while True:  # the refusal is audited from the association's thread
        with gateway.engine.connect() as conn:
            audit = conn.execute(select(audit_log.c.resource)).scalars().all()
        if any("INTRUDER" in text for text in audit) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert any("INTRUDER" in text and "not allowed" in text for text in audit)


def _audit_mentioning(gateway: Gateway, text: str) -> list[str]:
    deadline = time.monotonic() + 10
    while True:  # refusals are audited from the association's thread
        with gateway.engine.connect() as conn:
            audit = list(conn.execute(select(audit_log.c.resource)).scalars())
        found = [record for record in audit if text in record]
        if found or time.monotonic() > deadline:
            return found


def test_a_misrouted_association_is_rejected_when_the_called_ae_is_checked(
    gateway: Gateway, strict_gateway: Gateway
) -> None:
    # By default (as dcmtk's storescp and Orthanc) any called AE title is accepted.
    lenient = _dcmtk("echoscu", "-aet", "ECHOSCU", "-aec", "OTHERPACS", HOST, str(gateway.port))
    assert lenient.returncode == 0, lenient.stderr
    right = _dcmtk("echoscu", "-aet", "ECHOSCU", "-aec", AE_TITLE, HOST, str(strict_gateway.port))
    assert right.returncode == 0, right.stderr
    wrong = _dcmtk(
        "echoscu", "-aet", "ECHOSCU", "-aec", "OTHERPACS", HOST, str(strict_gateway.port)
    )
    assert wrong.returncode != 0
    said = (wrong.stdout + wrong.stderr).lower()
    assert "rejected permanent" in said
    assert "called ae title not recognized" in said
    refusals = _audit_mentioning(strict_gateway, "OTHERPACS")
    assert refusals
    assert "called AE title" in refusals[0]


def test_a_received_data_set_is_wrapped_as_part10_with_its_bytes_unchanged(
    tmp_path: Path,
) -> None:
    source = _dx_file(tmp_path / "dx.dcm").read_bytes()
    meta = pydicom.dcmread(tmp_path / "dx.dcm").file_meta
    wrapped = tmp_path / "wrapped.dcm"
    wrapped.write_bytes(
        encode_part10_header(
            str(meta.MediaStorageSOPClassUID),
            str(meta.MediaStorageSOPInstanceUID),
            str(meta.TransferSyntaxUID),
            implementation_class_uid=IMPLEMENTATION_CLASS_UID,
            implementation_version=IMPLEMENTATION_VERSION_NAME,
            source_ae="STORESCU",
        )
        + _data_set_bytes(source)
    )
    assert _data_set_bytes(wrapped.read_bytes()) == _data_set_bytes(source)
    assert parse_header(wrapped).sop_class_uid == DX_SOP_CLASS
    read = pydicom.dcmread(wrapped)
    assert read.file_meta.ImplementationClassUID == IMPLEMENTATION_CLASS_UID
    assert read.file_meta.SourceApplicationEntityTitle == "STORESCU"
