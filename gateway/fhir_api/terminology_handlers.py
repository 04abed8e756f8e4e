"""CodeSystem and ValueSet of the review decision, rationale and output codes: read, search-type.

Terminology carries no PHI; any valid token whose scopes name the type (or `*`) reads it.
"""

from __future__ import annotations

from typing import Any

from fhir_mapping.codesystems import all_code_systems, code_system_by_id
from gateway.domain.errors import NotFound
from gateway.fhir_api.core import FhirContext, FhirRequest, FhirResponse, SearchParam
from gateway.fhir_api.search import check_params, or_values, page, searchset

TERMINOLOGY_SEARCH_PARAMS: tuple[SearchParam, ...] = (
    SearchParam("_id", "token", "Logical id."),
    SearchParam("url", "uri", "Canonical URL."),
    SearchParam("name", "string", "Computer-friendly name."),
)


def value_set_for(code_system: dict[str, Any]) -> dict[str, Any]:
    """The ValueSet of all codes of one gateway CodeSystem (compose.include by system)."""
    return {
        "resourceType": "ValueSet",
        "id": code_system["id"],
        "url": code_system["url"].replace("/CodeSystem/", "/ValueSet/"),
        "version": code_system["version"],
        "name": code_system["name"],
        "title": code_system["title"],
        "status": "active",
        "experimental": False,
        "publisher": code_system["publisher"],
        "compose": {"include": [{"system": code_system["url"]}]},
    }


def _all(resource_type: str) -> list[dict[str, Any]]:
    systems = all_code_systems()
    return systems if resource_type == "CodeSystem" else [value_set_for(c) for c in systems]


def _filtered(request: FhirRequest, resource_type: str) -> list[dict[str, Any]]:
    check_params(request, TERMINOLOGY_SEARCH_PARAMS)
    found = _all(resource_type)
    for key, element in (("_id", "id"), ("url", "url"), ("name", "name")):
        for alternatives in or_values(request, key):
            if key == "name":
                found = [
                    r for r in found
                    if any(r[element].lower().startswith(v.lower()) for v in alternatives)
                ]  # fmt: skip
            else:
                found = [r for r in found if r[element] in alternatives]
    return found


def read_code_system(ctx: FhirContext, request: FhirRequest) -> FhirResponse:
    """`read` of a published CodeSystem."""
    found = code_system_by_id(request.params["id"])
    if found is None:
        raise NotFound(f"CodeSystem/{request.params['id']} is not published here")
    return FhirResponse(found)


def search_code_system(ctx: FhirContext, request: FhirRequest) -> FhirResponse:
    """`search-type` on CodeSystem."""
    found = _filtered(request, "CodeSystem")
    paging = page(request)
    chunk = found[paging.offset : paging.offset + paging.count]
    return FhirResponse(searchset(request, "CodeSystem", chunk, len(found), paging))


def read_value_set(ctx: FhirContext, request: FhirRequest) -> FhirResponse:
    """`read` of a published ValueSet."""
    found = code_system_by_id(request.params["id"])
    if found is None:
        raise NotFound(f"ValueSet/{request.params['id']} is not published here")
    return FhirResponse(value_set_for(found))


def search_value_set(ctx: FhirContext, request: FhirRequest) -> FhirResponse:
    """`search-type` on ValueSet."""
    found = _filtered(request, "ValueSet")
    paging = page(request)
    chunk = found[paging.offset : paging.offset + paging.count]
    return FhirResponse(searchset(request, "ValueSet", chunk, len(found), paging))
