"""The CapabilityStatement, generated from the route table (R4 capabilitystatement.html).

Everything a client may rely on (resources, interactions, search parameters, operations, SMART
security) comes from `ROUTES`; a test fails when the two drift apart.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from fhir_mapping.r4 import FHIR_VERSION
from fhir_mapping.subscriptions import (
    SERVER_CAPABILITY,
    SUBSCRIPTION_PROFILE,
    TOPIC,
    TOPIC_CANONICAL_EXT,
)
from fhir_mapping.task import fhir_instant
from gateway.fhir_api.core import Route
from gateway.settings import Settings

SMART_OAUTH_URIS = "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"
SECURITY_SERVICE = "http://terminology.hl7.org/CodeSystem/restful-security-service"
_TYPE_LEVEL = frozenset({"search-type", "create", "history-type"})


def _interactions(routes: Sequence[Route]) -> list[dict[str, str]]:
    seen: list[str] = []
    for route in routes:
        if route.interaction != "operation" and route.interaction not in seen:
            seen.append(route.interaction)
    return [{"code": code} for code in seen]


def _resource(resource_type: str, routes: Sequence[Route], base: str) -> dict[str, Any]:
    interactions = {r.interaction for r in routes}
    entry: dict[str, Any] = {
        "type": resource_type,
        "interaction": _interactions(routes),
        "versioning": "versioned-update" if "update" in interactions else "versioned",
        "readHistory": "vread" in interactions,
        "updateCreate": False,
        "conditionalCreate": False,
        "conditionalUpdate": False,
        "conditionalDelete": "not-supported",
    }
    params = [
        {"name": p.name, "type": p.type, "documentation": p.documentation}
        for r in routes
        for p in r.search_params
    ]
    if params:
        entry["searchParam"] = params
    if resource_type == "Task":
        entry["searchRevInclude"] = ["Provenance:target"]
    if resource_type == "Subscription":
        entry["supportedProfile"] = [SUBSCRIPTION_PROFILE]
        entry["extension"] = [{"url": TOPIC_CANONICAL_EXT, "valueCanonical": TOPIC}]
    operations = [
        {
            "name": r.operation,
            "definition": f"{base}/OperationDefinition/{resource_type}-{r.operation}",
            "documentation": r.documentation,
        }
        for r in routes
        if r.interaction == "operation"
    ]
    if operations:
        entry["operation"] = operations
    return entry


def capability_statement(settings: Settings, routes: Sequence[Route]) -> dict[str, Any]:
    """The server's CapabilityStatement for the given route table."""
    base = settings.http.fhir_base()
    issuer = settings.auth_issuer
    by_type: dict[str, list[Route]] = {}
    for route in routes:
        if not route.public:
            by_type.setdefault(route.resource_type, []).append(route)
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": fhir_instant(datetime.now(UTC)),
        "publisher": "hitl-gateway",
        "kind": "instance",
        "instantiates": [SERVER_CAPABILITY],
        "software": {"name": "hitl-gateway"},
        "implementation": {"description": "hitl-gateway FHIR R4 endpoint", "url": base},
        "fhirVersion": FHIR_VERSION,
        "format": ["json"],
        "rest": [
            {
                "mode": "server",
                "security": {
                    "extension": [
                        {
                            "url": SMART_OAUTH_URIS,
                            "extension": [
                                {"url": "token", "valueUri": f"{issuer}/token"},
                                {"url": "introspect", "valueUri": f"{issuer}/introspect"},
                            ],
                        }
                    ],
                    "cors": False,
                    "service": [
                        {"coding": [{"system": SECURITY_SERVICE, "code": "SMART-on-FHIR"}]}
                    ],
                    "description": "SMART App Launch v2 bearer tokens (RFC 6750); see "
                    f"{base}/.well-known/smart-configuration",
                },
                "resource": [_resource(t, rs, base) for t, rs in sorted(by_type.items())],
            }
        ],
    }
