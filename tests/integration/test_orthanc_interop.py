"""Orthanc as the PACS: it forwards a study to the gateway with its own C-STORE SCU.

Orthanc (Debian package) is started by the test on free 127.0.0.1 ports with a generated
configuration naming the gateway as a modality, loaded through its REST API and told to send.
"""

# ruff: noqa: F811  (start_listener is a fixture imported from test_dimse_faults)
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from tests.integration.test_dimse_faults import (  # noqa: F401  (start_listener: fixture)
    AE_TITLE,
    Listener,
    _wait,
    start_listener,
)
from tests.peers.orthanc import ORTHANC, Orthanc
from tests.unit.test_assembly import write_dicom

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(ORTHANC is None, reason="Orthanc is not installed"),
]


def test_orthanc_forwards_a_study_that_arrives_whole_and_unchanged(
    start_listener: Callable[..., Listener], tmp_path: Path
) -> None:
    gw = start_listener(allowed_calling_aes=("ORTHANC",))
    study = generate_uid()
    files = [write_dicom(tmp_path / f"{n}.dcm", study, modality="CT") for n in range(5)]
    pacs = Orthanc(
        tmp_path / "orthanc", modalities={"gateway": (AE_TITLE, "127.0.0.1", gw.port)}
    ).start()
    try:
        uploaded = [pacs.upload(path) for path in files]
        study_id = uploaded[0]["ParentStudy"]
        job = pacs.send_study("gateway", study_id)
        assert job.get("FailedInstancesCount", 0) == 0, job
    finally:
        pacs.stop()
    rows = gw.rows()
    assert sorted(str(r["sop_instance_uid"]) for r in rows) == sorted(
        str(pydicom.dcmread(p).SOPInstanceUID) for p in files
    )
    assert {r["calling_ae"] for r in rows} == {"ORTHANC"}
    # Orthanc re-encodes nothing: the data sets are the ones it was given.
    for row in rows:
        stored = pydicom.dcmread(str(row["path"]))
        original = next(
            pydicom.dcmread(p)
            for p in files
            if pydicom.dcmread(p).SOPInstanceUID == stored.SOPInstanceUID
        )
        assert stored.PixelData == original.PixelData

    def summary() -> list[dict[str, object]]:
        return [d for d in gw.audit() if "instances-transferred" in json.dumps(d)]

    _wait(summary)  # written when the association's connection closes, on its own thread
    assert '"5"' in json.dumps(summary()[-1])
