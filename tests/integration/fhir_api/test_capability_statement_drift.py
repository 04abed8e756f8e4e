"""The CapabilityStatement is generated from the route table; these tests fail when the served
API, the table and the statement drift apart (conventions: generated documents are tested)."""

from __future__ import annotations

from typing import Any

import pytest

from fhir_mapping.r4 import CapabilityStatement, validate
from gateway.fhir_api.routes import ROUTES
from gateway.settings import Settings
from tests.integration.fhir_api.conftest import FhirGateway

pytestmark = pytest.mark.integration

VALUES = {"date": "ge2020-01-01", "token": "x", "string": "x", "uri": "http://x", "number": "1"}
REFERENCE_VALUES = {
    "patient": "Patient/x", "subject": "Patient/x", "focus": "ImagingStudy/1.2.3",
    "encounter": "Encounter/x", "part-of": "Task/x", "owner": "Practitioner/x",
    "derived-from": "ImagingStudy/1.2.3", "device": "Device/x", "target": "Task/x",
    "agent": "Practitioner/x", "entity": "Task/x",
}  # fmt: skip


def _statement_interactions(statement: dict[str, Any]) -> set[tuple[str, str]]:
    found = set()
    for resource in statement["rest"][0]["resource"]:
        found |= {(resource["type"], i["code"]) for i in resource["interaction"]}
        found |= {(resource["type"], f"${o['name']}") for o in resource.get("operation", [])}
    return found


async def test_capability_statement_lists_exactly_the_route_table(fhir: FhirGateway) -> None:
    statement = await fhir.get("metadata")
    validate(CapabilityStatement, statement)
    expected = {
        (r.resource_type, f"${r.operation}" if r.operation else r.interaction) for r in ROUTES
    }
    assert _statement_interactions(statement) == expected
    for resource in statement["rest"][0]["resource"]:
        listed = {p["name"] for p in resource.get("searchParam", [])}
        table = {
            p.name for r in ROUTES if r.resource_type == resource["type"] for p in r.search_params
        }
        assert listed == table, resource["type"]
    security = statement["rest"][0]["security"]
    uris = {e["url"]: e["valueUri"] for e in security["extension"][0]["extension"]}
    assert uris["token"] == fhir.settings.auth_issuer + "/token"


async def test_every_route_is_served_and_every_served_fhir_path_is_in_the_table(
    fhir: FhirGateway,
) -> None:
    served = {
        (route.method, route.resource.canonical)
        for route in fhir.client.app.router.routes()
        if route.resource is not None and route.resource.canonical.startswith("/fhir/")
        and route.method != "HEAD"
    }  # fmt: skip
    table = {(r.method, "/fhir" + r.path) for r in ROUTES}
    outside = {
        ("GET", "/fhir/metadata"), ("GET", "/fhir/.well-known/smart-configuration"),
        ("GET", "/fhir/auth/jwks"), ("POST", "/fhir/auth/token"), ("POST", "/fhir/auth/introspect"),
    }  # fmt: skip
    assert served - outside == table


async def test_every_listed_search_parameter_is_accepted_and_others_are_refused(
    fhir: FhirGateway,
) -> None:
    admin = fhir.token(role="admin", user="Practitioner/admin")
    for route in ROUTES:
        if route.interaction != "search-type":
            continue
        for param in route.search_params:
            value = REFERENCE_VALUES.get(param.name, VALUES.get(param.type, "x"))
            response = await fhir.client.get(
                f"/fhir{route.path}", params={param.name: value}, headers=fhir.auth(admin)
            )
            assert response.status == 200, (route.path, param.name, await response.text())
        refused = await fhir.client.get(
            f"/fhir{route.path}", params={"not-a-param": "x"}, headers=fhir.auth(admin)
        )
        assert refused.status == 400, route.path


def test_statement_names_the_fhir_version_and_smart_service(tmp_path: Any) -> None:
    from gateway.fhir_api.capability import capability_statement

    statement = capability_statement(Settings(), ROUTES)
    assert statement["fhirVersion"] == "4.0.1"
    codes = [c["code"] for c in statement["rest"][0]["security"]["service"][0]["coding"]]
    assert codes == ["SMART-on-FHIR"]


def test_docs_list_every_route_with_its_scope_and_search_parameters() -> None:
    from pathlib import Path

    text = (Path(__file__).resolve().parents[3] / "docs" / "fhir-api.md").read_text("utf-8")
    for route in ROUTES:
        name = f"${route.operation}" if route.operation else route.interaction
        params = ", ".join(f"`{p.name}`" for p in route.search_params)
        row = f"| `{route.method} {route.path}` | {name} | `{route.scope_resource}.{route.scope}` |"
        assert f"{row} {params} |" in text, row
