"""Task search over the indexed columns of `tasks` (FHIR R4 Task search parameters, §1.6).

Supported: `_id`, `status`, `owner`, `patient`, `subject`, `focus`, `priority`, `business-status`,
`code`, `encounter`, `part-of`, `performer`, `_lastUpdated`, `modified`; `_sort` by `status`,
`priority` (clinical order routine < urgent < asap < stat), `_lastUpdated`, `modified`; `_count`,
`_offset`; `_revinclude=Provenance:target`.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import ColumnElement, Connection, case, func, select

from gateway.domain.errors import InvalidInput
from gateway.fhir_api.core import FhirRequest, SearchParam
from gateway.fhir_api.search import (
    any_of,
    check_params,
    date_clause,
    or_values,
    page,
    reference_value,
    sort_keys,
    token_code,
)
from gateway.persistence.tables import tasks

TASK_SEARCH_PARAMS: tuple[SearchParam, ...] = (
    SearchParam("_id", "token", "Logical id of the Task."),
    SearchParam("status", "token", "Task.status (task-status)."),
    SearchParam("owner", "reference", "Task.owner, e.g. Practitioner/123."),
    SearchParam("patient", "reference", "Task.for when it is a Patient."),
    SearchParam("subject", "reference", "Task.for."),
    SearchParam("focus", "reference", "Task.focus: ImagingStudy/<Study Instance UID>."),
    SearchParam("priority", "token", "Task.priority (request-priority)."),
    SearchParam("business-status", "token", "Task.businessStatus (review-business-status)."),
    SearchParam("code", "token", "Task.code (review-task-code)."),
    SearchParam("encounter", "reference", "Task.encounter."),
    SearchParam("part-of", "reference", "Task.partOf: the original of a secondary review."),
    SearchParam("performer", "token", "Task.performerType (task-performer-type)."),
    SearchParam("_lastUpdated", "date", "meta.lastUpdated."),
    SearchParam("modified", "date", "Task.lastModified."),
)
REVINCLUDE = "Provenance:target"
_PRIORITY_RANK = case(
    {"routine": 0, "urgent": 1, "asap": 2, "stat": 3}, value=tasks.c.priority, else_=0
)
SORTS: dict[str, Any] = {
    "status": tasks.c.status,
    "priority": _PRIORITY_RANK,
    "_lastUpdated": tasks.c.last_updated,
    "modified": tasks.c.last_modified,
    "_id": tasks.c.id,
}


def _tokens(request: FhirRequest, name: str, column: Any) -> list[ColumnElement[bool]]:
    clauses: list[ColumnElement[bool]] = []
    for alternatives in or_values(request, name):
        clauses.append(any_of(column == token_code(v)[1] for v in alternatives))
    return clauses


def _references(
    request: FhirRequest, name: str, column: Any, resource_type: str, keep_type: bool
) -> list[ColumnElement[bool]]:
    clauses: list[ColumnElement[bool]] = []
    for alternatives in or_values(request, name):
        values = []
        for raw in alternatives:
            ref = reference_value(raw, resource_type)
            kind, _, ident = ref.partition("/")
            if resource_type and kind != resource_type:
                raise InvalidInput(f"{name} must reference a {resource_type}", code="value")
            values.append(ref if keep_type else ident)
        clauses.append(any_of(column == v for v in values))
    return clauses


def task_conditions(request: FhirRequest) -> list[ColumnElement[bool]]:
    """The WHERE conditions of a Task search request."""
    check_params(request, TASK_SEARCH_PARAMS)
    c = tasks.c
    where: list[ColumnElement[bool]] = []
    where += _tokens(request, "_id", c.id)
    where += _tokens(request, "status", c.status)
    where += _tokens(request, "priority", c.priority)
    where += _tokens(request, "business-status", c.business_status)
    where += _tokens(request, "code", c.code)
    where += _tokens(request, "performer", c.performer_type)
    where += _references(request, "owner", c.owner, "", keep_type=True)
    where += _references(request, "patient", c.patient_id, "Patient", keep_type=False)
    where += _references(request, "subject", c.patient_id, "Patient", keep_type=False)
    where += _references(request, "focus", c.study_instance_uid, "ImagingStudy", keep_type=False)
    where += _references(request, "encounter", c.encounter_id, "Encounter", keep_type=False)
    where += _references(request, "part-of", c.part_of, "Task", keep_type=False)
    for name, column in (("_lastUpdated", c.last_updated), ("modified", c.last_modified)):
        for alternatives in or_values(request, name):
            where.append(any_of(date_clause(column, v) for v in alternatives))
    for value in request.query_values("_revinclude"):
        if value != REVINCLUDE:
            raise InvalidInput(f"_revinclude={value} is not supported", code="not-supported")
    return where


def search_tasks(
    conn: Connection, request: FhirRequest, patient: str | None
) -> tuple[list[dict[str, Any]], int]:
    """(matching Tasks of this page, total) for a search request, within a patient compartment."""
    where = task_conditions(request)
    if patient is not None:
        where.append(tasks.c.patient_id == patient)
    paging = page(request)
    total = conn.execute(select(func.count()).select_from(tasks).where(*where)).scalar_one()
    order = [*sort_keys(request, SORTS)] or [tasks.c.last_updated.desc()]
    # Order and page over the narrow columns first, then fetch only the page's documents: sorting
    # whole rows would drag every matching resource text through the sort.
    ids = (
        conn.execute(
            select(tasks.c.id)
            .where(*where)
            .order_by(*order, tasks.c.id)
            .limit(paging.count)
            .offset(paging.offset)
        )
        .scalars()
        .all()
    )
    if not ids:
        return [], int(total)
    texts = dict(
        conn.execute(select(tasks.c.id, tasks.c.resource).where(tasks.c.id.in_(ids))).tuples().all()
    )
    return [json.loads(texts[i]) for i in ids], int(total)
