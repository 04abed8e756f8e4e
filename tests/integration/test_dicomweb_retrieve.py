"""QIDO-RS and WADO-RS with dicomweb-client as the review app: search, retrieve, images."""

# ruff: noqa: F811  (gw and engine are fixtures imported from test_dicomweb_stow)
from __future__ import annotations

import asyncio
import io
from pathlib import Path

import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient
from PIL import Image
from pydicom.uid import generate_uid

from tests.integration.test_dicomweb_stow import (  # noqa: F401  (fixtures)
    Gateway,
    engine,
    gw,
)
from tests.unit.test_assembly import write_dicom

pytestmark = pytest.mark.integration


def _client(gw: Gateway, role: str) -> DICOMwebClient:
    return DICOMwebClient(url=gw.url, headers={"Authorization": f"Bearer {gw.token(role)}"})


async def _store_two_studies(gw: Gateway, tmp_path: Path) -> tuple[str, str, list[pydicom.Dataset]]:
    first, second = str(generate_uid()), str(generate_uid())
    datasets: list[pydicom.Dataset] = []
    for n, (study, patient) in enumerate([(first, "PAT-A"), (first, "PAT-A"), (second, "PAT-B")]):
        ds = pydicom.dcmread(write_dicom(tmp_path / f"{n}.dcm", study, patient_id=patient))
        ds.PatientName = "Doe^Jane" if patient == "PAT-A" else "Roe^Richard"
        ds.StudyDate = "20300101" if patient == "PAT-A" else "20300315"
        ds.InstanceNumber = n + 1
        ds.WindowCenter, ds.WindowWidth = 128, 256
        datasets.append(ds)
    await asyncio.to_thread(_client(gw, "pacs").store_instances, datasets)
    return first, second, datasets


async def test_qido_matching_keys_limit_and_offset(gw: Gateway, tmp_path: Path) -> None:
    first, second, _ = await _store_two_studies(gw, tmp_path)
    client = _client(gw, "reviewer")
    studies = await asyncio.to_thread(client.search_for_studies)
    assert sorted(s["0020000D"]["Value"][0] for s in studies) == sorted([first, second])
    by_uid = {s["0020000D"]["Value"][0]: s for s in studies}
    assert by_uid[first]["00201208"]["Value"] == [2]
    assert by_uid[first]["00080061"]["Value"] == ["DX"]
    assert by_uid[first]["00100010"]["Value"] == [{"Alphabetic": "Doe^Jane"}]

    async def uids(**params: str) -> list[str]:
        found = await asyncio.to_thread(client.search_for_studies, search_filters=params)
        return [s["0020000D"]["Value"][0] for s in found]

    assert await uids(PatientID="PAT-B") == [second]
    assert await uids(PatientName="Doe*") == [first]
    assert await uids(PatientName="doe^jane") in ([], [first])  # no fuzzy matching promised
    assert await uids(StudyDate="20300201-20301231") == [second]
    assert await uids(StudyInstanceUID=f"{first},{second}") == sorted([first, second])
    assert await uids(ModalitiesInStudy="CT") == []
    page = await asyncio.to_thread(client.search_for_studies, limit=1, offset=1)
    assert len(page) == 1
    assert page[0]["0020000D"]["Value"][0] == sorted([first, second])[1]
    series = await asyncio.to_thread(client.search_for_series, first)
    assert len(series) == 2  # write_dicom puts each instance in its own series
    found = await asyncio.to_thread(client.search_for_instances, first)
    assert sorted(i["00200013"]["Value"][0] for i in found) == [1, 2]
    # Each search is audited per patient found (IHE BALP), as FHIR searches are.
    searches = [
        line
        for line in gw.audit_text().splitlines()
        if "/dicomweb/studies" in line and '"search-type"' in line
    ]
    assert any("PAT-B" in line for line in searches)
    response = await gw.client.get(
        "/dicomweb/studies",
        params={"NoSuchKey": "1"},
        headers={"Authorization": f"Bearer {gw.token('reviewer')}"},
    )
    assert response.status == 400


async def test_wado_instances_metadata_and_rendered_images(gw: Gateway, tmp_path: Path) -> None:
    first, _second, datasets = await _store_two_studies(gw, tmp_path)
    client = _client(gw, "reviewer")
    ds = datasets[0]
    retrieved = await asyncio.to_thread(
        client.retrieve_instance, first, ds.SeriesInstanceUID, ds.SOPInstanceUID
    )
    assert retrieved.SOPInstanceUID == ds.SOPInstanceUID
    assert retrieved.PixelData == ds.PixelData
    study = await asyncio.to_thread(client.retrieve_study, first)
    assert sorted(i.SOPInstanceUID for i in study) == sorted(d.SOPInstanceUID for d in datasets[:2])
    metadata = await asyncio.to_thread(client.retrieve_study_metadata, first)
    assert len(metadata) == 2
    assert all("7FE00010" not in m for m in metadata)
    assert {m["00100020"]["Value"][0] for m in metadata} == {"PAT-A"}

    png = await asyncio.to_thread(
        client.retrieve_instance_rendered,
        first,
        ds.SeriesInstanceUID,
        ds.SOPInstanceUID,
        media_types=("image/png",),
        params={"window": "100,50,linear"},
    )
    image = Image.open(io.BytesIO(png))
    assert (image.format, image.size) == ("PNG", (16, 16))
    # The window was applied: values below 75 are black, above 125 white.
    assert image.getextrema() == (0, 255)
    headers = {"Authorization": f"Bearer {gw.token('reviewer')}", "Accept": "image/jpeg"}
    instance = (
        f"/dicomweb/studies/{first}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"
    )
    response = await gw.client.get(
        f"{instance}/thumbnail", params={"viewport": "8,8"}, headers=headers
    )
    assert response.status == 200
    assert response.content_type == "image/jpeg"
    assert Image.open(io.BytesIO(await response.read())).size == (8, 8)
    response = await gw.client.get(f"{instance}/rendered", params={"window": "x"}, headers=headers)
    assert response.status == 400
    response = await gw.client.get(
        f"{instance}/rendered", headers={**headers, "Accept": "image/gif"}
    )
    assert response.status == 406


async def test_reading_needs_a_reviewer_scope(gw: Gateway, tmp_path: Path) -> None:
    first, _, _ = await _store_two_studies(gw, tmp_path)
    response = await gw.client.get("/dicomweb/studies")
    assert response.status == 401
    response = await gw.client.get(
        f"/dicomweb/studies/{first}/metadata",
        headers={"Authorization": f"Bearer {gw.token('pacs')}"},
    )
    assert response.status == 403
