"""Every route of the FHIR table x every role (default scopes) and x every SMART scope letter:
the expected 401/403/allowed. "Allowed" means the request passed authorisation (any status
other than 401/403; write bodies are deliberately empty, so they stop at 400)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.auth.issuer import ROLES
from gateway.fhir_api.core import Route
from gateway.fhir_api.routes import ROUTES
from tests.integration.fhir_api.conftest import FhirGateway
from tests.unit.fhir.samples import STUDY_UID

pytestmark = pytest.mark.integration

# What each role may do, per resource type (the SMART letters its default scopes grant).
ROLE_ACCESS: dict[str, dict[str, str]] = {
    "reviewer": {"Task": "crus", "Provenance": "rs", "ImagingStudy": "rs", "Observation": "rs",
                 "Device": "rs", "CodeSystem": "rs", "ValueSet": "rs", "Subscription": "cruds"},
    "secondary-reviewer": {"Task": "rus", "Provenance": "rs", "ImagingStudy": "rs",
                           "Observation": "rs", "Device": "rs", "CodeSystem": "rs",
                           "ValueSet": "rs", "Subscription": "cruds"},
    "auditor": {"Provenance": "rs", "AuditEvent": "rs"},
    "auditor-phi": {"Provenance": "rs", "AuditEvent": "rs", "Task": "rs"},
    "model-approver": {"Device": "rs"},
    "admin": {t: "cruds" for t in ("Task", "Provenance", "AuditEvent", "ImagingStudy",
                                    "Observation", "Device", "CodeSystem", "ValueSet",
                                    "Subscription")},
    "pacs": {"ImagingStudy": "c"},
}  # fmt: skip


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    """Authorisation does not depend on the database, so the matrix runs on SQLite only."""
    return f"sqlite:///{tmp_path / 'gateway.db'}"


def _ids(fhir: FhirGateway) -> dict[str, str]:
    return {
        "Task": fhir.task_id,
        "Provenance": fhir.audit("Provenance")[0]["id"],
        "AuditEvent": fhir.audit("AuditEvent")[0]["id"],
        "ImagingStudy": STUDY_UID,
        "Observation": "score-1",
        "Device": "cxr-pneumothorax-3",
        "CodeSystem": "review-decision",
        "ValueSet": "review-decision",
        "Subscription": "absent",
    }


def _path(ids: dict[str, str], route: Route) -> str:
    return "/fhir" + route.path.replace("{id}", ids[route.resource_type]).replace("{vid}", "1")


async def _status(fhir: FhirGateway, ids: dict[str, str], route: Route, token: str | None) -> int:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    body: dict[str, str] | None = {} if route.method in {"POST", "PUT"} else None
    response = await fhir.client.request(
        route.method, _path(ids, route), json=body, headers=headers
    )
    return response.status


def test_the_matrix_covers_every_role() -> None:
    assert set(ROLE_ACCESS) == set(ROLES)


async def test_every_route_for_every_role_gets_the_expected_status(fhir: FhirGateway) -> None:
    failures = []
    ids = _ids(fhir)
    for route in ROUTES:
        status = await _status(fhir, ids, route, None)
        if status != 401:
            failures.append((route.method, route.path, "no token", status))
        for role in ROLES:
            granted = ROLE_ACCESS[role].get(route.scope_resource, "")
            expected_allowed = route.scope in granted
            token = fhir.token(role=role, user="Practitioner/dr-1")
            status = await _status(fhir, ids, route, token)
            allowed = status not in {401, 403}
            if allowed != expected_allowed or (not expected_allowed and status != 403):
                failures.append((route.method, route.path, role, status))
    assert failures == []


async def test_every_route_for_every_scope_letter(fhir: FhirGateway) -> None:
    failures = []
    ids = _ids(fhir)
    for route in ROUTES:
        for letter in "cruds":
            # The granted letter is tried in both contexts; the others in one suffice.
            for context in ("user", "system") if letter == route.scope else ("user",):
                scope = f"{context}/{route.scope_resource}.{letter}"
                token = fhir.token(role="admin", user="Practitioner/dr-1", scopes=scope)
                status = await _status(fhir, ids, route, token)
                allowed = status not in {401, 403}
                if allowed != (letter == route.scope):
                    failures.append((route.method, route.path, scope, status))
    assert failures == []
