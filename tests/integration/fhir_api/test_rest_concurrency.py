"""standards.md §8 "REST / concurrency", one test per checklist line, over a real socket."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.integration.fhir_api.conftest import FHIR_JSON, FhirGateway
from tests.unit.fhir.samples import STUDY_UID, decision_body

pytestmark = pytest.mark.integration


async def test_read_create_update_responses_carry_etag_and_last_modified(fhir: FhirGateway) -> None:
    task, etag = await fhir.read_task()
    assert etag == f'W/"{task["meta"]["versionId"]}"' == 'W/"1"'
    response = await fhir.put_task(decision_body(task), etag)
    assert response.status == 200, await response.text()
    assert response.headers["ETag"] == 'W/"2"'
    assert response.headers["Last-Modified"].endswith(" GMT")
    vread = await fhir.client.get(f"/fhir/Task/{fhir.task_id}/_history/1", headers=fhir.auth())
    assert vread.headers["ETag"] == 'W/"1"'
    assert "Last-Modified" in vread.headers


async def test_put_with_stale_if_match_is_412_and_no_new_version(fhir: FhirGateway) -> None:
    task, _ = await fhir.read_task()
    response = await fhir.put_task(decision_body(task), 'W/"9"')
    assert response.status == 412
    assert (await response.json(content_type=FHIR_JSON))["resourceType"] == "OperationOutcome"
    history = await fhir.get(f"Task/{fhir.task_id}/_history")
    assert history["total"] == 1


async def test_put_without_if_match_is_400(fhir: FhirGateway) -> None:
    task, _ = await fhir.read_task()
    response = await fhir.put_task(decision_body(task), None)
    assert response.status == 400
    assert (await fhir.read_task())[1] == 'W/"1"'


async def test_two_concurrent_claims_one_succeeds_the_other_gets_412(fhir: FhirGateway) -> None:
    task, etag = await fhir.read_task()
    claim = dict(task, status="in-progress")
    first, second = await asyncio.gather(
        fhir.put_task(claim, etag, fhir.token(user="Practitioner/dr-1")),
        fhir.put_task(claim, etag, fhir.token(user="Practitioner/dr-2")),
    )
    assert sorted([first.status, second.status]) == [200, 412]
    winner = first if first.status == 200 else second
    claimed = await winner.json(content_type=FHIR_JSON)
    current, now_etag = await fhir.read_task()
    assert now_etag == 'W/"2"'
    assert current["owner"] == claimed["owner"]
    assert current["status"] == "in-progress"


async def test_create_returns_201_and_location_with_history(fhir: FhirGateway) -> None:
    from sqlalchemy import insert

    from gateway.persistence.tables import studies
    from tests.integration.fhir_api.conftest import study_row

    with fhir.engine.begin() as conn:
        conn.execute(insert(studies).values(study_row("1.2.3.99", patient="pat-9")))
    body = {
        "resourceType": "Task", "status": "requested", "intent": "order", "priority": "asap",
        "focus": {"reference": "ImagingStudy/1.2.3.99"}, "note": [{"text": "apical lucency"}],
    }  # fmt: skip
    response = await fhir.client.post("/fhir/Task", json=body, headers=fhir.auth())
    assert response.status == 201, await response.text()
    created = await response.json(content_type=FHIR_JSON)
    assert response.headers["Location"] == (
        f"http://127.0.0.1:8080/fhir/Task/{created['id']}/_history/1"
    )
    assert response.headers["ETag"] == 'W/"1"'
    assert "Last-Modified" in response.headers
    assert created["status"] == "requested"
    assert created["businessStatus"]["coding"][0]["code"] == "escalated-by-reviewer"
    assert created["for"] == {"reference": "Patient/pat-9", "type": "Patient"}
    assert created["restriction"]["period"]["end"] > created["restriction"]["period"]["start"]
    # One open review Task per study: a second request is refused.
    again = await fhir.client.post("/fhir/Task", json=body, headers=fhir.auth())
    assert again.status == 409


async def _ids(fhir: FhirGateway, query: str) -> list[str]:
    bundle = await fhir.get(f"Task?{query}")
    assert bundle["type"] == "searchset"
    return [e["resource"]["id"] for e in bundle.get("entry", []) if e["search"]["mode"] == "match"]


async def test_search_parameters_all_work_and_are_listed_in_capability_statement(
    fhir: FhirGateway,
) -> None:
    task, etag = await fhir.read_task()
    claimed = await fhir.put_task(dict(task, status="in-progress"), etag)
    assert claimed.status == 200
    me = [fhir.task_id]
    checks: dict[str, tuple[str, list[str]]] = {
        "status": ("status=in-progress,requested", me),
        "owner": ("owner=Practitioner/dr-1", me),
        "patient": ("patient=Patient/pat-1", me),
        "subject": ("subject=Patient/pat-1", me),
        "focus": (f"focus=ImagingStudy/{STUDY_UID}", me),
        "priority": ("priority=urgent", me),
        "business-status": ("business-status=awaiting-review", me),
        "code": ("code=ai-finding-review", me),
        "encounter": ("encounter=Encounter/enc-1", me),
        "part-of": (f"part-of=Task/{fhir.task_id}", []),
        "performer": ("performer=reviewer", me),
        "_lastUpdated": ("_lastUpdated=gt2020-01-01", me),
        "modified": ("modified=ge2020-01-01T00:00:00Z", me),
        "_id": (f"_id={fhir.task_id}", me),
    }
    for name, (query, expected) in checks.items():
        assert await _ids(fhir, query) == expected, name
    assert await _ids(fhir, "owner=Practitioner/dr-2") == []
    assert await _ids(fhir, "patient=Patient/other") == []
    assert await _ids(fhir, "_lastUpdated=lt2020-01-01") == []
    assert await _ids(fhir, "status=completed") == []
    revinclude = await fhir.get(f"Task?_id={fhir.task_id}&_revinclude=Provenance:target")
    included = [e["resource"] for e in revinclude["entry"] if e["search"]["mode"] == "include"]
    assert {p["resourceType"] for p in included} == {"Provenance"}
    assert len(included) == 2  # scoring and claim
    metadata = await fhir.get("metadata")
    task_entry = next(r for r in metadata["rest"][0]["resource"] if r["type"] == "Task")
    listed = {p["name"] for p in task_entry["searchParam"]}
    assert set(checks) <= listed
    assert task_entry["searchRevInclude"] == ["Provenance:target"]
    unknown = await fhir.client.get("/fhir/Task?colour=blue", headers=fhir.auth())
    assert unknown.status == 400


async def test_paging_links_and_sort(fhir: FhirGateway) -> None:
    from dataclasses import replace

    from tests.unit.fhir.samples import score, study

    with fhir.engine.begin() as conn:
        for n, value in enumerate((0.85, 0.97, 0.999)):
            uid = f"1.2.3.4.{n}"
            fhir.review.create_review_task(
                conn, replace(study(), study_instance_uid=uid),
                replace(score(value), study_instance_uid=uid),
            )  # fmt: skip
    first = await fhir.get("Task?_count=2&_sort=-priority")
    assert first["total"] == 4
    links = {link["relation"]: link["url"] for link in first["link"]}
    assert {"self", "first", "next", "last"} <= set(links)
    assert "_offset=2" in links["next"]
    ranks = {"routine": 0, "urgent": 1, "asap": 2, "stat": 3}
    page1 = [ranks[e["resource"]["priority"]] for e in first["entry"]]
    nxt = links["next"].split("/fhir/", 1)[1]
    second = await fhir.get(nxt)
    page2 = [ranks[e["resource"]["priority"]] for e in second["entry"]]
    assert page1 + page2 == sorted(page1 + page2, reverse=True)
    assert "previous" in {link["relation"] for link in second["link"]}
    assert "next" not in {link["relation"] for link in second["link"]}
    bad = await fhir.client.get("/fhir/Task?_sort=colour", headers=fhir.auth())
    assert bad.status == 400


async def test_vread_and_history_instance(fhir: FhirGateway) -> None:
    task, etag = await fhir.read_task()
    await fhir.put_task(dict(task, status="in-progress"), etag)
    v1 = await fhir.get(f"Task/{fhir.task_id}/_history/1")
    assert v1["status"] == "requested"
    assert v1["meta"]["versionId"] == "1"
    history = await fhir.get(f"Task/{fhir.task_id}/_history")
    assert history["type"] == "history"
    assert [e["resource"]["meta"]["versionId"] for e in history["entry"]] == ["2", "1"]
    assert history["entry"][1]["request"]["method"] == "POST"
    await fhir.get(f"Task/{fhir.task_id}/_history/7", status=404)
    await fhir.get("Task/absent/_history", status=404)


@pytest.mark.parametrize("method", ["PUT", "PATCH", "DELETE"])
async def test_audit_event_and_provenance_are_immutable(fhir: FhirGateway, method: str) -> None:
    provenance = fhir.audit("Provenance")[0]
    event = fhir.audit("AuditEvent")[0]
    for resource in (provenance, event):
        url = f"/fhir/{resource['resourceType']}/{resource['id']}"
        response = await fhir.client.request(method, url, json=resource, headers=fhir.auth())
        assert response.status == 405
        body: dict[str, Any] = await response.json(content_type=FHIR_JSON)
        assert body["resourceType"] == "OperationOutcome"
        assert "GET" in response.headers.get("Allow", "")
    assert fhir.audit("Provenance")[0] == provenance
