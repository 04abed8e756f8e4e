"""FHIR operations: `$escalate` on ImagingStudy (a reviewer escalates an unflagged study)."""

from __future__ import annotations

from gateway.domain.errors import InvalidInput
from gateway.fhir_api.access import check_compartment, compartment
from gateway.fhir_api.core import FhirContext, FhirRequest, FhirResponse, version_headers

ESCALATE_DOC = (
    "POST ImagingStudy/<uid>/$escalate with Parameters priority (code: urgent|asap|stat), "
    "rationale (code from review-rationale valid for override) and optional note (string): "
    "creates a review Task for the study and completes it as an override, so the worklist "
    "priority is raised; returns the completed Task."
)


def escalate_imaging_study(ctx: FhirContext, request: FhirRequest) -> FhirResponse:
    """`$escalate`: reviewer escalation of a study the model did not flag."""
    from gateway.escalation import escalate_study

    if request.principal is None:
        raise InvalidInput("$escalate needs an authenticated caller")
    allowed = compartment(request.principal, "Task", "c")
    if allowed is not None:
        from sqlalchemy import select

        from gateway.persistence.tables import studies

        with ctx.engine.connect() as conn:
            patient = conn.execute(
                select(studies.c.patient_id).where(
                    studies.c.study_instance_uid == request.params["id"]
                )
            ).scalar_one_or_none()
        check_compartment(allowed, str(patient or ""), f"ImagingStudy/{request.params['id']}")
    task = escalate_study(
        ctx.review, request.params["id"], request.body, request.principal, request.request_id
    )
    headers = version_headers(task)
    headers["Location"] = f"{request.base}/Task/{task['id']}/_history/{task['meta']['versionId']}"
    return FhirResponse(
        task,
        headers=headers,
        touched=(f"Task/{task['id']}/_history/{task['meta']['versionId']}",),
    )
