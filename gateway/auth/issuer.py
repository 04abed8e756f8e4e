"""The embedded development issuer: one RSA key (RS256) under the keys directory, its JWKS, and
tokens minted for the CLI (`hitl-gateway token`).

Production deployments point `auth.jwks_path` and `auth.issuer` at the hospital's authorization
server instead; the validator treats both the same way.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway.settings import Settings

KEY_FILE = "issuer-rs256.pem"
ALGORITHM = "RS256"

ROLES: tuple[str, ...] = (
    "reviewer",
    "secondary-reviewer",
    "auditor",
    "auditor-phi",
    "model-approver",
    "admin",
    "pacs",
)

# SMART App Launch v2 scopes (`cruds` grammar) each role gets unless others are asked for.
DEFAULT_SCOPES: Mapping[str, str] = {
    "reviewer": "openid fhirUser user/Task.crus user/Provenance.rs user/ImagingStudy.rs "
    "user/Observation.rs user/Device.rs user/CodeSystem.rs user/ValueSet.rs "
    "user/Subscription.cruds",
    "secondary-reviewer": "openid fhirUser user/Task.rus user/Provenance.rs user/ImagingStudy.rs "
    "user/Observation.rs user/Device.rs user/CodeSystem.rs user/ValueSet.rs "
    "user/Subscription.cruds",
    "auditor": "openid fhirUser user/Provenance.rs user/AuditEvent.rs",
    "auditor-phi": "openid fhirUser user/Provenance.rs user/AuditEvent.rs user/Task.rs",
    "model-approver": "openid fhirUser user/Device.rs",
    "admin": "openid fhirUser user/*.cruds",
    "pacs": "system/ImagingStudy.c",
}


def _b64url_uint(value: int) -> str:
    raw = value.to_bytes((value.bit_length() + 7) // 8, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def key_path(settings: Settings) -> Path:
    """Where the embedded issuer's private key lives."""
    return settings.storage.keys_dir / KEY_FILE


def load_or_create_key(settings: Settings) -> rsa.RSAPrivateKey:
    """The issuer's private key, created (mode 0600) on first use."""
    path = key_path(settings)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        # O_EXCL: when two processes start at once, one key wins and both then read it.
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "wb") as fh:
                fh.write(pem)
                fh.flush()
                os.fsync(fh.fileno())
    loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(loaded, rsa.RSAPrivateKey):
        raise ValueError(f"{path} does not hold an RSA private key")
    return loaded


def public_jwk(key: rsa.RSAPrivateKey) -> dict[str, str]:
    """The public JWK of the key, with an RFC 7638 thumbprint as `kid`."""
    numbers = key.public_key().public_numbers()
    members = {"e": _b64url_uint(numbers.e), "kty": "RSA", "n": _b64url_uint(numbers.n)}
    thumbprint = hashlib.sha256(
        json.dumps(members, separators=(",", ":"), sort_keys=True).encode("ascii")
    ).digest()
    kid = base64.urlsafe_b64encode(thumbprint).rstrip(b"=").decode("ascii")
    return {**members, "kid": kid, "use": "sig", "alg": ALGORITHM}


def jwks(settings: Settings) -> dict[str, Any]:
    """The embedded issuer's JWKS (public keys only)."""
    return {"keys": [public_jwk(load_or_create_key(settings))]}


def _scope_text(role: str, scopes: str | Sequence[str] | None) -> str:
    if scopes is None:
        return DEFAULT_SCOPES[role]
    if isinstance(scopes, str):
        return scopes
    return " ".join(scopes)


def mint_token(
    settings: Settings,
    *,
    role: str,
    user: str,
    scopes: str | Sequence[str] | None = None,
    lifetime: int | None = None,
    patient: str = "",
    extra_claims: Mapping[str, Any] | None = None,
) -> str:
    """A signed development access token for `user` (e.g. Practitioner/123) acting in `role`."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; known roles: {', '.join(ROLES)}")
    if "/" not in user:
        raise ValueError("user must be a FHIR reference such as Practitioner/123")
    key = load_or_create_key(settings)
    now = int(time.time())
    seconds = settings.auth.token_lifetime_seconds if lifetime is None else lifetime
    claims: dict[str, Any] = {
        "iss": settings.auth_issuer,
        "aud": settings.http.fhir_base(),
        "sub": user,
        "fhirUser": user,
        "roles": [role],
        "scope": _scope_text(role, scopes),
        "iat": now,
        "nbf": now,
        "exp": now + seconds,
        "jti": uuid.uuid4().hex,
    }
    if patient:
        claims["patient"] = patient.removeprefix("Patient/")
    claims.update(extra_claims or {})
    headers = {"kid": public_jwk(key)["kid"], "typ": "JWT"}
    return jwt.encode(claims, key, algorithm=ALGORITHM, headers=headers)
