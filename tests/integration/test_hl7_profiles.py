"""Both HL7 profiles over a real MLLP listener, for every priority row, in clear and over TLS."""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message

from adapters.worklist.factory import tls_context
from adapters.worklist.hl7_render import OMI_O23, ORM_O01, Hl7Profile, control_id_for
from adapters.worklist.mllp import MllpWorklistUpdater
from gateway.domain.errors import DeliveryFailed
from gateway.domain.priority import PRIORITY_TABLE, Priority
from gateway.domain.worklist import PRIORITY_CHANGE_KIND, PriorityChange
from gateway.ports import WorklistMessage
from gateway.settings import WorklistDestination
from tests.peers.mllp_listener import MllpListener

pytestmark = pytest.mark.integration

STUDY = "1.2.826.0.1.3680043.8.498.81"


def _message(priority: Priority) -> WorklistMessage:
    change = PriorityChange(
        idempotency_key=f"task-8:{priority.rank + 2}",
        study_instance_uid=STUDY,
        accession_number="ACC-81",
        patient_id="PAT-81",
        patient_name="Müller^Jörg",
        priority=priority,
        requested_at=dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC),
    )
    return WorklistMessage(8, change.idempotency_key, "hl7", PRIORITY_CHANGE_KIND, change.to_json())


@pytest.fixture
def ris() -> Iterator[MllpListener]:
    """The RIS: a real MLLP listener that ACKs AA."""
    listener = MllpListener().start()
    yield listener
    listener.stop()


@pytest.mark.parametrize("priority", list(Priority))
async def test_omi_o23_carries_accession_patient_and_tq1_9(
    ris: MllpListener, priority: Priority
) -> None:
    updater = MllpWorklistUpdater("127.0.0.1", ris.port, timeout=5, profile=Hl7Profile(OMI_O23))
    message = _message(priority)
    await updater.deliver(message)

    (text,) = ris.messages
    parsed = parse_message(text.replace("\n", "\r"), validation_level=VALIDATION_LEVEL.STRICT)
    parsed.validate()
    assert parsed.msh.msh_10.to_er7() == control_id_for(message.idempotency_key)
    assert parsed.omi_o23_patient.pid.pid_3.to_er7() == "PAT-81"
    order = parsed.omi_o23_order
    assert order.orc.orc_1.to_er7() == "XO"
    assert order.ipc.ipc_1.to_er7() == "ACC-81"
    assert order.ipc.ipc_3.to_er7() == STUDY
    tq1_9 = order.omi_o23_timing.tq1.tq1_9.to_er7().split("^")
    assert (tq1_9[0], tq1_9[2]) == (PRIORITY_TABLE[priority].hl7_0485, "HL70485")


@pytest.mark.parametrize("priority", list(Priority))
async def test_orm_o01_carries_accession_patient_and_orc_7_6(
    ris: MllpListener, priority: Priority
) -> None:
    updater = MllpWorklistUpdater("127.0.0.1", ris.port, timeout=5, profile=Hl7Profile(ORM_O01))
    await updater.deliver(_message(priority))

    (text,) = ris.messages
    parsed = parse_message(text.replace("\n", "\r"), validation_level=VALIDATION_LEVEL.STRICT)
    assert (parsed.msh.msh_9.to_er7(), parsed.msh.msh_12.to_er7()) == ("ORM^O01", "2.3")
    assert parsed.orm_o01_patient.pid.pid_3.to_er7() == "PAT-81"
    order = parsed.orm_o01_order
    code = PRIORITY_TABLE[priority].hl7_0027
    assert order.orc.orc_1.to_er7() == "XO"
    assert order.orc.orc_7.to_er7().split("^")[5] == code
    obr = order.orm_o01_order_detail.orm_o01_choice.obr
    assert obr.obr_18.to_er7() == "ACC-81"
    assert obr.obr_27.to_er7().split("^")[5] == code


def _certificate(tmp: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ris.test")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp / "ris.pem", tmp / "ris.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


async def test_mllp_over_tls_verifies_the_ris(tmp_path: Path) -> None:
    cert, key = _certificate(tmp_path)
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    listener = MllpListener(tls=server_tls).start()
    try:
        trusted = WorklistDestination(
            name="ris", host="127.0.0.1", port=listener.port, tls=True, tls_ca_file=str(cert)
        )
        updater = MllpWorklistUpdater(
            "127.0.0.1", listener.port, timeout=5, tls=tls_context(trusted)
        )
        await updater.deliver(_message(Priority.STAT))
        assert len(listener.messages) == 1

        untrusted = WorklistDestination(name="ris", host="127.0.0.1", port=listener.port, tls=True)
        stranger = MllpWorklistUpdater(
            "127.0.0.1", listener.port, timeout=5, tls=tls_context(untrusted)
        )
        with pytest.raises(DeliveryFailed, match="CERTIFICATE_VERIFY_FAILED"):
            await stranger.deliver(_message(Priority.ASAP))
        assert len(listener.messages) == 1
    finally:
        listener.stop()
