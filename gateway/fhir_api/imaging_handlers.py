"""ImagingStudy (received studies), Observation (AI results) and Device (model versions):
read and search-type, built from the `studies`, `instances` and `scores` tables.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from typing import Any

from sqlalchemy import Connection, func, select

from fhir_mapping.imaging import (
    gateway_device,
    imaging_study,
    model_device,
    score_observation,
)
from gateway.domain.errors import NotFound
from gateway.domain.model import ModelIdentity
from gateway.fhir_api.access import check_compartment, compartment
from gateway.fhir_api.core import FhirContext, FhirRequest, FhirResponse, SearchParam
from gateway.fhir_api.search import (
    check_params,
    or_values,
    page,
    reference_id,
    searchset,
    token_code,
)
from gateway.persistence.tables import instances, scores, studies

IMAGING_STUDY_SEARCH_PARAMS = (
    SearchParam("_id", "token", "Study Instance UID."),
    SearchParam("patient", "reference", "ImagingStudy.subject (Patient)."),
    SearchParam("identifier", "token", "urn:dicom:uid|urn:oid:<uid> or the accession number."),
)
OBSERVATION_SEARCH_PARAMS = (
    SearchParam("_id", "token", "score-<n>."),
    SearchParam("patient", "reference", "Observation.subject (Patient)."),
    SearchParam("derived-from", "reference", "The scored ImagingStudy."),
    SearchParam("device", "reference", "The model Device."),
)
DEVICE_SEARCH_PARAMS = (
    SearchParam("_id", "token", "Logical id."),
    SearchParam("identifier", "token", "ONNX SHA-256 or registry name:version."),
    SearchParam("device-name", "string", "Device.deviceName.name (starts with)."),
)


def _study(conn: Connection, row: Any) -> dict[str, Any]:
    members = conn.execute(
        select(instances).where(instances.c.study_instance_uid == row.study_instance_uid)
        .order_by(instances.c.id)
    ).mappings().all()  # fmt: skip
    return imaging_study(row._mapping, [dict(m) for m in members])


def read_imaging_study(ctx: FhirContext, request: FhirRequest) -> FhirResponse:
    """`read` of a received study."""
    allowed = compartment(request.principal, "ImagingStudy", "r")
    with ctx.engine.connect() as conn:
        row = conn.execute(
            select(studies).where(studies.c.study_instance_uid == request.params["id"])
        ).first()
        if row is None:
            raise NotFound(f"ImagingStudy/{request.params['id']} is not known")
        check_compartment(allowed, row.patient_id, f"ImagingStudy/{request.params['id']}")
        resource = _study(conn, row)
    return FhirResponse(resource, touched=(f"ImagingStudy/{resource['id']}",),
                        patients=(row.patient_id,) if row.patient_id else ())  # fmt: skip


def search_imaging_study(ctx: FhirContext, request: FhirRequest) -> FhirResponse:
    """`search-type` on ImagingStudy."""
    check_params(request, IMAGING_STUDY_SEARCH_PARAMS)
    allowed = compartment(request.principal, "ImagingStudy", "s")
    c = studies.c
    where: list[Any] = []
    for alternatives in or_values(request, "_id"):
        where.append(c.study_instance_uid.in_(alternatives))
    for alternatives in or_values(request, "patient"):
        where.append(c.patient_id.in_([reference_id(v, "Patient") for v in alternatives]))
    for alternatives in or_values(request, "identifier"):
        codes = [token_code(v)[1] for v in alternatives]
        uids = [v.removeprefix("urn:oid:") for v in codes]
        where.append(c.study_instance_uid.in_(uids) | c.accession_number.in_(codes))
    if allowed is not None:
        where.append(c.patient_id == allowed)
    paging = page(request)
    with ctx.engine.connect() as conn:
        total = conn.execute(select(func.count()).select_from(studies).where(*where)).scalar_one()
        rows = conn.execute(
            select(studies).where(*where).order_by(c.first_received_at.desc(), c.study_instance_uid)
            .limit(paging.count).offset(paging.offset)
        ).all()  # fmt: skip
        found = [_study(conn, row) for row in rows]
    return FhirResponse(searchset(request, "ImagingStudy", found, int(total), paging),
                        touched=tuple(f"ImagingStudy/{r['id']}" for r in found))  # fmt: skip


def _scored() -> Any:
    return (
        select(scores, studies.c.patient_id)
        .join(studies, studies.c.study_instance_uid == scores.c.study_instance_uid, isouter=True)
        .where(scores.c.outcome == "scored", scores.c.score.is_not(None))
    )


def _observation(row: Any) -> dict[str, Any]:
    return score_observation(row._mapping, str(row.patient_id or ""))


def read_observation(ctx: FhirContext, request: FhirRequest) -> FhirResponse:
    """`read` of an AI result."""
    allowed = compartment(request.principal, "Observation", "r")
    raw = request.params["id"].removeprefix("score-")
    if not raw.isdigit():
        raise NotFound(f"Observation/{request.params['id']} is not known")
    with ctx.engine.connect() as conn:
        row = conn.execute(_scored().where(scores.c.id == int(raw))).first()
    if row is None:
        raise NotFound(f"Observation/{request.params['id']} is not known")
    check_compartment(allowed, str(row.patient_id or ""), f"Observation/{request.params['id']}")
    resource = _observation(row)
    return FhirResponse(resource, touched=(f"Observation/{resource['id']}",))


def search_observation(ctx: FhirContext, request: FhirRequest) -> FhirResponse:
    """`search-type` on Observation (AI results)."""
    check_params(request, OBSERVATION_SEARCH_PARAMS)
    allowed = compartment(request.principal, "Observation", "s")
    query = _scored()
    for alternatives in or_values(request, "_id"):
        ids = [
            int(v.removeprefix("score-"))
            for v in alternatives
            if v.removeprefix("score-").isdigit()
        ]
        query = query.where(scores.c.id.in_(ids))
    for alternatives in or_values(request, "patient"):
        query = query.where(
            studies.c.patient_id.in_([reference_id(v, "Patient") for v in alternatives])
        )
    for alternatives in or_values(request, "derived-from"):
        uids = [reference_id(v, "ImagingStudy") for v in alternatives]
        query = query.where(scores.c.study_instance_uid.in_(uids))
    if allowed is not None:
        query = query.where(studies.c.patient_id == allowed)
    with ctx.engine.connect() as conn:
        found = [_observation(row) for row in conn.execute(query.order_by(scores.c.id.desc()))]
    for alternatives in or_values(request, "device"):
        refs = {f"Device/{reference_id(v, 'Device')}" for v in alternatives}
        found = [o for o in found if o["device"]["reference"] in refs]
    paging = page(request)
    chunk = found[paging.offset : paging.offset + paging.count]
    return FhirResponse(searchset(request, "Observation", chunk, len(found), paging))


def _devices(conn: Connection) -> list[dict[str, Any]]:
    rows = conn.execute(
        select(scores.c.model_name, scores.c.model_version, scores.c.model_sha256,
               scores.c.use_case, func.min(scores.c.created_at).label("first"))
        .where(scores.c.model_name.is_not(None))
        .group_by(scores.c.model_name, scores.c.model_version, scores.c.model_sha256,
                  scores.c.use_case)
    ).all()  # fmt: skip
    try:
        own = package_version("hitl-gateway")
    except PackageNotFoundError:
        own = "0"
    devices = [gateway_device(own)]
    for row in rows:
        model = ModelIdentity(str(row.model_name), str(row.model_version),
                              str(row.model_sha256 or ""), str(row.use_case))  # fmt: skip
        devices.append(model_device(model, row.first))
    return devices


def read_device(ctx: FhirContext, request: FhirRequest) -> FhirResponse:
    """`read` of a model version Device (or the gateway's own)."""
    with ctx.engine.connect() as conn:
        found = [d for d in _devices(conn) if d["id"] == request.params["id"]]
    if not found:
        raise NotFound(f"Device/{request.params['id']} is not known")
    return FhirResponse(found[0], touched=(f"Device/{found[0]['id']}",))


def search_device(ctx: FhirContext, request: FhirRequest) -> FhirResponse:
    """`search-type` on Device."""
    check_params(request, DEVICE_SEARCH_PARAMS)
    with ctx.engine.connect() as conn:
        found = _devices(conn)
    for alternatives in or_values(request, "_id"):
        found = [d for d in found if d["id"] in alternatives]
    for alternatives in or_values(request, "identifier"):
        wanted = [token_code(v) for v in alternatives]
        found = [
            d for d in found
            if any(
                (s is None or s == i.get("system")) and c == i.get("value")
                for s, c in wanted for i in d.get("identifier", [])
            )
        ]  # fmt: skip
    for alternatives in or_values(request, "device-name"):
        found = [
            d for d in found
            if any(n["name"].lower().startswith(v.lower())
                   for v in alternatives for n in d["deviceName"])
        ]  # fmt: skip
    paging = page(request)
    chunk = found[paging.offset : paging.offset + paging.count]
    return FhirResponse(searchset(request, "Device", chunk, len(found), paging))
