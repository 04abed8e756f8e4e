"""SMART App Launch 2.2 discovery (`.well-known/smart-configuration`, conformance.md).

REQUIRED: `token_endpoint`, `grant_types_supported`, `capabilities`,
`code_challenge_methods_supported` (S256, never plain); `issuer`/`jwks_uri` accompany them. The
embedded issuer serves Backend Services (client_credentials, private_key_jwt) and introspection.
"""

from __future__ import annotations

from typing import Any

from gateway.settings import Settings

CAPABILITIES = (
    "client-confidential-asymmetric",
    "permission-v2",
    "permission-v1",
    "permission-user",
    "permission-patient",
    "context-ehr-patient",
)
SCOPES_SUPPORTED = (
    "openid",
    "fhirUser",
    "launch",
    "launch/patient",
    "user/Task.crus",
    "user/Provenance.rs",
    "user/AuditEvent.rs",
    "user/ImagingStudy.rs",
    "user/Observation.rs",
    "user/Device.rs",
    "patient/Task.rs",
    "patient/ImagingStudy.rs",
    "system/Task.cruds",
    "system/Provenance.rs",
    "system/AuditEvent.rs",
)


def token_endpoint(settings: Settings) -> str:
    """The token endpoint URL (also the `aud` of client assertions)."""
    return f"{settings.auth_issuer}/token"


def introspection_endpoint(settings: Settings) -> str:
    """The RFC 7662 token introspection endpoint URL."""
    return f"{settings.auth_issuer}/introspect"


def smart_configuration(settings: Settings) -> dict[str, Any]:
    """SMART App Launch v2 discovery document (.well-known/smart-configuration)."""
    issuer = settings.auth_issuer
    return {
        "issuer": issuer,
        "jwks_uri": settings.auth.jwks_uri or f"{issuer}/jwks",
        "token_endpoint": token_endpoint(settings),
        "introspection_endpoint": introspection_endpoint(settings),
        "grant_types_supported": ["client_credentials"],
        "token_endpoint_auth_methods_supported": ["private_key_jwt"],
        "token_endpoint_auth_signing_alg_values_supported": ["RS384", "ES384"],
        "scopes_supported": list(SCOPES_SUPPORTED),
        "response_types_supported": ["token"],
        "capabilities": list(CAPABILITIES),
        "code_challenge_methods_supported": ["S256"],
    }
