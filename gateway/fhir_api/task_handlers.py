"""Task interactions (FHIR R4 http.html): read, vread, history-instance, search-type, create,
update.

Responses carry `ETag: W/"<versionId>"` and `Last-Modified`; update needs `If-Match` (400 when
missing, 412 when stale); create answers 201 with `Location: [base]/Task/<id>/_history/1`.
"""

from __future__ import annotations

from typing import Any

from gateway.audit.search_index import catch_up, search_audit
from gateway.domain.errors import InvalidInput
from gateway.fhir_api.access import check_compartment, compartment
from gateway.fhir_api.core import FhirContext, FhirRequest, FhirResponse, version_headers
from gateway.fhir_api.search import page, searchset
from gateway.fhir_api.task_search import REVINCLUDE, search_tasks


def _patient_of(task: dict[str, Any]) -> str:
    return str(task.get("for", {}).get("reference", "")).removeprefix("Patient/")


def _versioned(task: dict[str, Any]) -> str:
    return f"Task/{task['id']}/_history/{task['meta']['versionId']}"


def read_task(ctx: FhirContext, request: FhirRequest) -> FhirResponse:
    """`read`: the current version of a Task."""
    allowed = compartment(request.principal, "Task", "r")
    with ctx.engine.connect() as conn:
        task = ctx.review.repository.read(conn, request.params["id"])
    check_compartment(allowed, _patient_of(task), f"Task/{request.params['id']}")
    return FhirResponse(
        task, headers=version_headers(task), touched=(_versioned(task),),
        patients=(_patient_of(task),),
    )  # fmt: skip


def vread_task(ctx: FhirContext, request: FhirRequest) -> FhirResponse:
    """`vread`: one version of a Task (GET Task/<id>/_history/<vid>)."""
    allowed = compartment(request.principal, "Task", "r")
    try:
        version = int(request.params["vid"])
    except ValueError:
        raise InvalidInput("the version id must be a number", code="value") from None
    with ctx.engine.connect() as conn:
        task = ctx.review.repository.read_version(conn, request.params["id"], version)
    check_compartment(allowed, _patient_of(task), f"Task/{request.params['id']}")
    return FhirResponse(
        task, headers=version_headers(task), touched=(_versioned(task),),
        patients=(_patient_of(task),),
    )  # fmt: skip


def history_task(ctx: FhirContext, request: FhirRequest) -> FhirResponse:
    """`history-instance`: every version of a Task as a history Bundle, newest first."""
    allowed = compartment(request.principal, "Task", "r")
    with ctx.engine.connect() as conn:
        versions = ctx.review.repository.history(conn, request.params["id"])
    check_compartment(allowed, _patient_of(versions[0]), f"Task/{request.params['id']}")
    entries = []
    for task in versions:
        first = task["meta"]["versionId"] == "1"
        entries.append(
            {
                "fullUrl": f"{request.base}/Task/{task['id']}",
                "resource": task,
                "request": {"method": "POST" if first else "PUT",
                            "url": "Task" if first else f"Task/{task['id']}"},
                "response": {"status": "201 Created" if first else "200 OK",
                             "etag": f'W/"{task["meta"]["versionId"]}"',
                             "lastModified": task["meta"]["lastUpdated"]},
            }
        )  # fmt: skip
    bundle = {"resourceType": "Bundle", "type": "history", "total": len(entries), "entry": entries}
    return FhirResponse(
        bundle, touched=tuple(_versioned(t) for t in versions), patients=(_patient_of(versions[0]),)
    )


def search_task(ctx: FhirContext, request: FhirRequest) -> FhirResponse:
    """`search-type` on Task (with `_revinclude=Provenance:target`)."""
    allowed = compartment(request.principal, "Task", "s")
    paging = page(request)
    with ctx.engine.connect() as conn:
        found, total = search_tasks(conn, request, allowed)
    included: list[dict[str, Any]] = []
    if REVINCLUDE in request.query_values("_revinclude") and found:
        catch_up(ctx.engine)
        targets = [f"Task/{t['id']}" for t in found]
        with ctx.engine.connect() as conn:
            included, _ = search_audit(
                conn, "Provenance", indexed=[("target", targets)], count=10_000, offset=0,
                newest_first=False,
            )  # fmt: skip
    bundle = searchset(request, "Task", found, total, paging, included)
    return FhirResponse(
        bundle,
        touched=tuple(_versioned(t) for t in found),
        patients=tuple(sorted({_patient_of(t) for t in found} - {""})),
    )


def create_task(ctx: FhirContext, request: FhirRequest) -> FhirResponse:
    """`create`: a reviewer asks for review of a study the model did not flag (escalation)."""
    from gateway.escalation import request_review

    if request.principal is None:
        raise InvalidInput("create needs an authenticated caller")
    task = request_review(ctx.review, request.body, request.principal, request.request_id)
    headers = version_headers(task)
    headers["Location"] = f"{request.base}/Task/{task['id']}/_history/{task['meta']['versionId']}"
    return FhirResponse(
        task, status=201, headers=headers, touched=(_versioned(task),),
        patients=(_patient_of(task),),
    )  # fmt: skip


def update_task(ctx: FhirContext, request: FhirRequest) -> FhirResponse:
    """`update`: claim, release or complete a review Task (If-Match required)."""
    allowed = compartment(request.principal, "Task", "u")
    if allowed is not None:
        with ctx.engine.connect() as conn:
            current = ctx.review.repository.read(conn, request.params["id"])
        check_compartment(allowed, _patient_of(current), f"Task/{request.params['id']}")
    stored = ctx.review.complete(
        request.params["id"],
        request.body,
        request.header("If-Match"),
        request.principal,
        request.request_id,
    )
    return FhirResponse(
        stored, headers=version_headers(stored), touched=(_versioned(stored),),
        patients=(_patient_of(stored),),
    )  # fmt: skip
