# ruff: noqa: F811  (start_listener is a fixture imported from test_dimse_faults)
"""The DICOM Conformance Statement is generated from the code and is true of the running SCP."""

from __future__ import annotations

import re

import pytest
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, build_context

from conformance.dicom_statement import STATEMENT_PATH, render
from gateway.dicom_services import STATUS_MEANINGS
from tests.integration.test_dimse_faults import (  # noqa: F401  (start_listener: fixture)
    AE_TITLE,
    HOST,
    Listener,
    start_listener,
)

pytestmark = pytest.mark.integration

_UID = re.compile(r"`(1\.2\.840\.10008\.[0-9.]+)`")


def _section(text: str, heading: str) -> str:
    start = text.index(heading)
    end = text.index("\n#", start + len(heading))
    return text[start:end]


def test_the_statement_file_is_what_the_code_generates() -> None:
    assert STATEMENT_PATH.read_text(encoding="utf-8") == render(), (
        "run `python -m conformance.dicom_statement`"
    )
    for status in STATUS_MEANINGS:
        assert f"`0x{int(status):04X}`" in render()


def test_the_running_scp_accepts_exactly_what_the_statement_lists(
    start_listener: object,
) -> None:
    text = STATEMENT_PATH.read_text(encoding="utf-8")
    sop_classes = _UID.findall(_section(text, "#### SOP Classes"))
    syntaxes = _UID.findall(_section(text, "#### Transfer syntaxes"))
    assert sop_classes
    assert syntaxes
    gw: Listener = start_listener()  # type: ignore[operator]
    storage = [uid for uid in sop_classes if uid != "1.2.840.10008.1.1"]
    offered = [(s, t) for s in storage for t in syntaxes]
    accepted: set[tuple[str, str]] = set()
    for start in range(0, len(offered), 120):
        ae = AE(ae_title="CONFORM")
        ae.requested_contexts = [build_context(s, t) for s, t in offered[start : start + 120]]
        assoc = ae.associate(HOST, gw.port, ae_title=AE_TITLE)
        assert assoc.is_established
        # The statement names the implementation the acceptor announces.
        assert f"`{assoc.acceptor.implementation_class_uid}`" in text
        assert f"`{assoc.acceptor.implementation_version_name}`" in text
        accepted |= {
            (str(c.abstract_syntax), str(c.transfer_syntax[0])) for c in assoc.accepted_contexts
        }
        assoc.release()
    assert accepted == set(offered)
    # Something the statement does not list is refused: Basic Text SR, explicit big endian.
    ae = AE(ae_title="CONFORM")
    ae.add_requested_context("1.2.840.10008.5.1.4.1.1.88.11", ExplicitVRLittleEndian)
    ae.add_requested_context(storage[0], "1.2.840.10008.1.2.2")
    ae.add_requested_context("1.2.840.10008.1.1", ExplicitVRLittleEndian)
    assoc = ae.associate(HOST, gw.port, ae_title=AE_TITLE)
    try:
        assert [str(c.abstract_syntax) for c in assoc.accepted_contexts] == ["1.2.840.10008.1.1"]
    finally:
        assoc.release()
