"""The upper-layer codec against pynetdicom's independent encoder and decoder (PS3.8, PS3.7)."""

from __future__ import annotations

import io
import struct

import pytest
from pydicom.dataset import Dataset
from pynetdicom.dsutils import decode, encode
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RJ, A_ASSOCIATE_RQ, P_DATA_TF
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    MaximumLengthNotification,
)
from pynetdicom.presentation import build_context

from gateway.listeners import dicom_pdu as pdu
from gateway.listeners.dicom_association import AcceptancePolicy, negotiate

CT = "1.2.840.10008.5.1.4.1.1.2"
SR = "1.2.840.10008.5.1.4.1.1.88.11"
EXPLICIT = "1.2.840.10008.1.2.1"
IMPLICIT = "1.2.840.10008.1.2"
BIG = "1.2.840.10008.1.2.2"


def _request_bytes(max_length: int = 16384) -> bytes:
    primitive = A_ASSOCIATE()
    primitive.application_context_name = pdu.APPLICATION_CONTEXT
    primitive.calling_ae_title = "MODALITY1"
    primitive.called_ae_title = "HITLGW"
    contexts = [
        build_context(CT, [BIG, EXPLICIT, IMPLICIT]),
        build_context(SR),
        build_context(CT, BIG),
    ]
    for n, context in enumerate(contexts):
        context.context_id = 2 * n + 1
    primitive.presentation_context_definition_list = contexts
    length = MaximumLengthNotification()
    length.maximum_length_received = max_length
    implementation = ImplementationClassUIDNotification()
    implementation.implementation_class_uid = "1.2.3.4"
    primitive.user_information = [length, implementation]
    rq = A_ASSOCIATE_RQ()
    rq.from_primitive(primitive)
    return bytes(rq.encode())


POLICY = AcceptancePolicy(ae_title="HITLGW", supported={CT: frozenset({EXPLICIT, IMPLICIT})})


def test_a_request_encoded_by_pynetdicom_is_decoded() -> None:
    request = pdu.decode_associate_rq(_request_bytes()[6:])
    assert (request.calling_ae, request.called_ae) == ("MODALITY1", "HITLGW")
    assert request.max_length == 16384
    assert request.implementation_class_uid == "1.2.3.4"
    assert request.contexts[0] == pdu.ProposedContext(1, CT, (BIG, EXPLICIT, IMPLICIT))
    assert [c.context_id for c in request.contexts] == [1, 3, 5]


def test_negotiation_keeps_the_requestors_preference_and_refuses_the_rest() -> None:
    request = pdu.decode_associate_rq(_request_bytes()[6:])
    results = negotiate(POLICY, request)
    assert [(r.context_id, r.result) for r in results] == [(1, 0), (3, 3), (5, 4)]
    assert results[0].transfer_syntax == EXPLICIT  # first acceptable in the proposed order
    accept = pdu.encode_associate_ac(
        request,
        results,
        max_length=131072,
        implementation_class_uid="2.25.1",
        implementation_version="HITLGW_0_1",
    )
    ac = A_ASSOCIATE_AC()
    ac.decode(accept)
    assert ac.calling_ae_title == "MODALITY1"
    by_id = {item.context_id: item for item in ac.presentation_context}
    assert by_id[1].result == 0
    assert by_id[1].transfer_syntax == EXPLICIT
    assert (by_id[3].result, by_id[5].result) == (3, 4)
    user = ac.user_information
    assert user is not None
    assert user.maximum_length == 131072
    assert user.implementation_class_uid == "2.25.1"


def test_a_rejection_decodes_with_its_result_source_and_reason() -> None:
    rj = A_ASSOCIATE_RJ()
    rj.decode(pdu.encode_associate_rj(1, 1, 3))
    assert (rj.result, rj.source, rj.reason_diagnostic) == (1, 1, 3)


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"\x00\x01" + b"\x00" * 60,  # shorter than the fixed fields
        b"\x00\x01\x00\x00" + b" " * 32 + b"\x00" * 32 + b"\x20\x00\xff\xff",  # item past the end
        b"\x00\x01\x00\x00" + b" " * 32 + b"\x00" * 32,  # no application context
    ],
)
def test_a_malformed_request_raises_pdu_error(body: bytes) -> None:
    with pytest.raises(pdu.PduError):
        pdu.decode_associate_rq(body)


def _store_command() -> bytes:
    command = Dataset()
    command.CommandGroupLength = 0
    command.AffectedSOPClassUID = CT
    command.CommandField = 0x0001
    command.MessageID = 7
    command.Priority = 0
    command.CommandDataSetType = 0x0001
    command.AffectedSOPInstanceUID = "1.2.3.4.5"
    raw = encode(command, True, True)
    assert raw is not None
    return raw


def test_a_command_is_decoded_and_answered_in_a_response_pynetdicom_reads() -> None:
    command = pdu.decode_command(_store_command())
    assert command.command_field == pdu.C_STORE_RQ
    assert (command.message_id, command.has_data_set) == (7, True)
    assert (command.affected_sop_class, command.affected_sop_instance) == (CT, "1.2.3.4.5")
    response = decode(
        io.BytesIO(pdu.encode_response(command, 0xB000, comment="new version 2")),
        True,
        True,
    )
    assert response.CommandField == 0x8001
    assert (response.MessageIDBeingRespondedTo, response.Status) == (7, 0xB000)
    assert response.ErrorComment == "new version 2"
    assert response.AffectedSOPInstanceUID == "1.2.3.4.5"
    group = response.CommandGroupLength
    assert group == len(pdu.encode_response(command, 0xB000, comment="new version 2")) - 12


def test_a_command_outside_group_0000_or_truncated_raises() -> None:
    with pytest.raises(pdu.PduError):
        pdu.decode_command(struct.pack("<HHI", 8, 0x18, 2) + b"1\x00")
    with pytest.raises(pdu.PduError):
        pdu.decode_command(_store_command()[:-3])
    with pytest.raises(pdu.PduError):
        _ = pdu.decode_command(b"").command_field


def test_responses_are_split_to_the_peers_maximum_pdu_length() -> None:
    command = pdu.decode_command(_store_command())
    response = pdu.encode_response(command, 0, comment="x" * 60)
    data = pdu.encode_p_data(3, response, 64)
    fragments: list[bytes] = []
    offset = 0
    while offset < len(data):
        pdu_type, length = pdu.PDU_HEADER.unpack_from(data, offset)
        assert pdu_type == pdu.P_DATA_TF
        assert length <= 64
        tf = P_DATA_TF()
        tf.decode(data[offset : offset + 6 + length])
        for item in tf.presentation_data_value_items:
            assert item.context_id == 3
            assert item.presentation_data_value is not None
            fragments.append(item.presentation_data_value)
        offset += 6 + length
    assert len(fragments) > 1
    assert [f[0] for f in fragments] == [0x01] * (len(fragments) - 1) + [0x03]
    assert b"".join(f[1:] for f in fragments) == response
