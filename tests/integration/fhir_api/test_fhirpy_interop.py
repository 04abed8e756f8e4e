"""Interop: fhirpy (async client) as the EHR-embedded review app. It searches the open Tasks,
claims one, completes it with each decision, and reads the Provenance back via `_revinclude`."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from fhirpy import AsyncFHIRClient
from fhirpy.base.exceptions import BaseFHIRError

from fhir_mapping import codesystems as cs
from tests.integration.fhir_api.conftest import FhirGateway
from tests.unit.fhir.samples import score, study

pytestmark = pytest.mark.integration

DECISIONS = [
    ("approve", "finding-confirmed", None),
    ("override", "priority-too-high", "routine"),
    ("reject", "artifact", None),
]


def _client(fhir: FhirGateway, **headers: str) -> AsyncFHIRClient:
    url = str(fhir.client.make_url("/fhir"))
    return AsyncFHIRClient(url, authorization=f"Bearer {fhir.token()}", extra_headers=headers)


def _etag(resource: Any) -> str:
    return f'W/"{resource["meta"]["versionId"]}"'


def _outputs(decision: str, rationale: str, priority: str | None) -> list[dict[str, Any]]:
    outputs: list[dict[str, Any]] = [
        {"type": cs.concept(cs.OUTPUT_TYPE_SYSTEM, "decision"),
         "valueCodeableConcept": cs.concept(cs.DECISION_SYSTEM, decision)},
        {"type": cs.concept(cs.OUTPUT_TYPE_SYSTEM, "rationale"),
         "valueCodeableConcept": cs.concept(cs.RATIONALE_SYSTEM, rationale)},
    ]  # fmt: skip
    if priority:
        outputs.append({"type": cs.concept(cs.OUTPUT_TYPE_SYSTEM, "override-priority"),
                        "valueCode": priority})  # fmt: skip
    return outputs


async def test_ehr_app_claims_and_completes_tasks_with_each_decision(fhir: FhirGateway) -> None:
    with fhir.engine.begin() as conn:
        for n in (1, 2):
            uid = f"1.2.3.5.{n}"
            fhir.review.create_review_task(
                conn, replace(study(), study_instance_uid=uid),
                replace(score(0.9), study_instance_uid=uid),
            )  # fmt: skip
    app = _client(fhir)
    open_tasks = await app.resources("Task").search(status="requested").sort("-priority").fetch()
    assert len(open_tasks) == 3
    for task, (decision, rationale, priority) in zip(open_tasks, DECISIONS, strict=True):
        task["status"] = "in-progress"
        claimer = _client(fhir, **{"If-Match": _etag(task)})
        claimed = claimer.resource("Task", **dict(task))
        await claimed.save()
        assert claimed["owner"]["reference"] == "Practitioner/dr-1"
        assert claimed["meta"]["versionId"] == "2"

        claimed["status"] = "completed"
        claimed["output"] = _outputs(decision, rationale, priority)
        completer = _client(fhir, **{"If-Match": _etag(claimed)})
        done = completer.resource("Task", **dict(claimed))
        await done.save()
        assert done["status"] == "completed"
        assert (
            done["businessStatus"]["coding"][0]["code"]
            == cs.DECISION_BUSINESS_STATUS[next(d for d in cs.DECISIONS if d.value == decision)]
        )

        bundle = await app.resources("Task").search(_id=done.id).revinclude(
            "Provenance", "target"
        ).fetch_raw()  # fmt: skip
        provenance = [e.resource for e in bundle.entry if e.resource.resourceType == "Provenance"]
        assert {f"Provenance/{p.id}" for p in provenance} == {
            r["reference"] for r in done["relevantHistory"]
        }
        decided = [p for p in provenance if p["target"][0]["reference"].endswith("/_history/3")]
        assert decided[0]["agent"][0]["who"]["reference"] == "Practitioner/dr-1"
    remaining = await app.resources("Task").search(status="requested").fetch()
    assert remaining == []
    stale = _client(fhir, **{"If-Match": 'W/"1"'}).resource("Task", **dict(open_tasks[0]))
    with pytest.raises(BaseFHIRError, match="If-Match names version 1"):
        await stale.save()
