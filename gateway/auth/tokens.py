"""Bearer token validation and SMART on FHIR v2 scope checks (SMART App Launch 2.2, RFC 6750).

A token is accepted only when its signature verifies against the issuer's JWKS (selected by `kid`),
`iss` is the configured issuer, `aud` is our FHIR base URL and `exp`/`nbf` hold within the leeway.
Scopes follow the v2 grammar `(patient|user|system)/<Type|*>.<cruds subset in order>`; a
malformed order (`Task.ur`) is not honoured. v1 scopes are mapped as SMART 2.2 says (`.read` →
`rs`, `.write` → `cud`, `.*` → `cruds`) because `permission-v1` is advertised. `patient/` scopes
count only when the token names a launch patient, and then only for that patient's compartment
(enforced per interaction by `gateway.fhir_api.access`).

The JWKS comes from the embedded issuer, a file (`auth.jwks_path`) or a URL (`auth.jwks_uri`); a
file or URL is cached for `auth.jwks_cache_seconds` and re-read early when a token names an
unknown `kid` (key rotation), at most once per `MIN_REFRESH_SECONDS`.
"""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jwt

from gateway.auth.issuer import jwks as embedded_jwks
from gateway.auth.issuer import mint_token
from gateway.domain.errors import Forbidden, NotAuthenticated
from gateway.domain.model import Actor
from gateway.settings import Settings

__all__ = [
    "InsufficientScope",
    "InvalidToken",
    "MissingToken",
    "Principal",
    "Scope",
    "TokenValidator",
    "bearer_token",
    "mint_token",
    "parse_scope",
    "require_scope",
]

ACCEPTED_ALGORITHMS = ["RS256", "RS384", "ES256", "ES384"]
MIN_REFRESH_SECONDS = 10.0
V1_LETTERS = {"read": "rs", "write": "cud", "*": "cruds"}
_V1_SCOPE = re.compile(
    r"^(?P<context>patient|user|system)/(?P<type>[A-Z][A-Za-z]*|\*)\.(?P<v1>read|write|\*)$"
)
REQUIRED_CLAIMS = ["iss", "aud", "sub", "exp", "iat", "jti"]
_SCOPE = re.compile(
    r"^(?P<context>patient|user|system)/(?P<type>[A-Z][A-Za-z]*|\*)"
    r"\.(?P<letters>c?r?u?d?s?)(?:\?(?P<query>.*))?$"
)


class InvalidToken(NotAuthenticated):
    """A bearer token was sent but cannot be accepted (RFC 6750 `invalid_token`)."""

    code = "login"


class MissingToken(NotAuthenticated):
    """No bearer token was sent (RFC 6750: challenge without an error code)."""

    code = "login"


class InsufficientScope(Forbidden):
    """The token's scopes do not cover the interaction (RFC 6750 `insufficient_scope`)."""

    code = "forbidden"


@dataclass(frozen=True, slots=True)
class Scope:
    """One SMART v2 resource scope, e.g. user/Task.rus."""

    context: str
    resource_type: str
    interactions: frozenset[str]

    def allows(self, resource_type: str, interaction: str) -> bool:
        """True when this scope covers the interaction letter on the resource type."""
        return self.resource_type in {resource_type, "*"} and interaction in self.interactions


def parse_scope(text: str) -> Scope | None:
    """A resource scope (v2, or v1 mapped to v2), or None for other or malformed scopes."""
    match = _SCOPE.match(text)
    if match is not None and match["letters"]:
        return Scope(match["context"], match["type"], frozenset(match["letters"]))
    v1 = _V1_SCOPE.match(text)
    if v1 is not None:
        return Scope(v1["context"], v1["type"], frozenset(V1_LETTERS[v1["v1"]]))
    return None


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller: who (actor), what it may do (roles, scopes)."""

    actor: Actor
    scopes: tuple[Scope, ...]
    raw_scope: str = ""
    patient: str = ""  # SMART launch context: the patient `patient/` scopes are limited to
    client_id: str = ""

    @property
    def roles(self) -> tuple[str, ...]:
        """The roles mapped from the token's claims."""
        return self.actor.roles


def require_scope(principal: Principal, resource_type: str, interaction: str) -> None:
    """Raise InsufficientScope unless a scope allows `interaction` (one of c r u d s)."""
    if interaction not in "cruds" or len(interaction) != 1:
        raise ValueError(f"not a SMART interaction letter: {interaction!r}")
    usable = (s for s in principal.scopes if s.context in {"user", "system"} or principal.patient)
    if not any(s.allows(resource_type, interaction) for s in usable):
        raise InsufficientScope(
            f"scope does not allow '{interaction}' on {resource_type}", code="forbidden"
        )


def bearer_token(authorization: str | None) -> str:
    """The token of an `Authorization: Bearer` header; MissingToken or InvalidToken otherwise."""
    if not authorization:
        raise MissingToken("a bearer token is required")
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise InvalidToken("the Authorization header must be 'Bearer <token>'")
    return token.strip()


class TokenValidator:
    """Validates access tokens against the issuer's JWKS (embedded key or `auth.jwks_path`)."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._issuer = settings.auth_issuer
        self._audience = settings.http.fhir_base()
        self._leeway = settings.auth.leeway_seconds
        self._lock = threading.Lock()
        self._loaded_at = 0.0
        self._jwks: dict[str, Any] = {}
        self._keys: dict[str, jwt.PyJWK] = {}
        self._refresh()

    @property
    def _external(self) -> bool:
        return bool(self._settings.auth.jwks_path or self._settings.auth.jwks_uri)

    def _load_jwks(self) -> dict[str, Any]:
        path, uri = self._settings.auth.jwks_path, self._settings.auth.jwks_uri
        if uri:
            # Only the configured issuer's JWKS URL is fetched (closed networks: nothing else).
            with urllib.request.urlopen(uri, timeout=5) as response:  # noqa: S310
                data = json.loads(response.read().decode("utf-8"))
        elif path:
            with open(path, encoding="utf-8") as fh:
                data = json.load(fh)
        else:
            return embedded_jwks(self._settings)
        if not isinstance(data, dict):
            raise ValueError(f"{uri or path} is not a JWKS document")
        return data

    def _refresh(self) -> None:
        jwks = self._load_jwks()
        keys: dict[str, jwt.PyJWK] = {}
        for k in jwks.get("keys", []):
            if isinstance(k, Mapping) and k.get("kid") and k.get("use", "sig") == "sig":
                try:
                    keys[str(k["kid"])] = jwt.PyJWK.from_dict(dict(k))
                except jwt.PyJWTError:
                    continue  # a key of a type we cannot use never verifies anything
        self._jwks, self._keys, self._loaded_at = jwks, keys, time.monotonic()

    def _key(self, kid: str) -> jwt.PyJWK | None:
        if not self._external:
            return self._keys.get(kid)
        age = time.monotonic() - self._loaded_at
        stale = age > self._settings.auth.jwks_cache_seconds
        if stale or (kid not in self._keys and age > MIN_REFRESH_SECONDS):
            with self._lock:
                try:
                    self._refresh()
                except (OSError, ValueError):
                    # Keep the cached keys: an unreachable issuer must not lock everyone out.
                    self._loaded_at = time.monotonic()
        return self._keys.get(kid)

    def public_jwks(self) -> dict[str, Any]:
        """The public JWKS the validator trusts (served for the embedded issuer)."""
        return {"keys": [dict(k) for k in self._jwks.get("keys", [])]}

    def validate(self, token: str) -> Principal:
        """Verify a token and map its claims to a Principal; InvalidToken when not acceptable."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise InvalidToken("the token is not a JWS") from None
        key = self._key(str(header.get("kid", "")))
        if key is None:
            raise InvalidToken("the token's signing key (kid) is not trusted")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key=key,
                algorithms=ACCEPTED_ALGORITHMS,
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway,
                options={"require": REQUIRED_CLAIMS},
            )
        except jwt.ExpiredSignatureError:
            raise InvalidToken("the token has expired") from None
        except jwt.InvalidAudienceError:
            raise InvalidToken("the token's audience is not this FHIR server") from None
        except jwt.InvalidIssuerError:
            raise InvalidToken("the token's issuer is not trusted") from None
        except jwt.ImmatureSignatureError:
            raise InvalidToken("the token is not valid yet") from None
        except jwt.MissingRequiredClaimError as exc:
            raise InvalidToken(f"the token lacks the '{exc.claim}' claim") from None
        except jwt.PyJWTError:
            raise InvalidToken("the token's signature does not verify") from None
        return self._principal(claims)

    @staticmethod
    def _principal(claims: Mapping[str, Any]) -> Principal:
        roles = claims.get("roles", [])
        if isinstance(roles, str):
            roles = roles.split()
        if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
            raise InvalidToken("the token's 'roles' claim must be a list of strings")
        scope_text = claims.get("scope", "")
        if not isinstance(scope_text, str):
            raise InvalidToken("the token's 'scope' claim must be a string")
        fhir_user = claims.get("fhirUser", "")
        patient = claims.get("patient", "")
        if not isinstance(patient, str):
            raise InvalidToken("the token's 'patient' claim must be a string")
        client_id = str(claims.get("client_id", ""))
        if not fhir_user and client_id:
            fhir_user = f"Device/{client_id}"  # Backend Services: the client system itself acts
        actor = Actor(
            reference=fhir_user if isinstance(fhir_user, str) else "",
            roles=tuple(roles),
            token_id=str(claims["jti"]),
        )
        scopes = tuple(s for s in (parse_scope(p) for p in scope_text.split()) if s is not None)
        return Principal(
            actor=actor, scopes=scopes, raw_scope=scope_text,
            patient=patient.removeprefix("Patient/"), client_id=client_id,
        )  # fmt: skip
