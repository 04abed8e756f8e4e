"""SMART Backend Services token endpoint and token introspection of the embedded issuer.

SMART App Launch 2.2 backend-services.md / client-confidential-asymmetric.md: the client sends
`grant_type=client_credentials`, the jwt-bearer `client_assertion_type` and a JWT signed with
one of its registered keys (RS384 or ES384, `kid` required) whose `iss` = `sub` = client_id,
`aud` = the token endpoint, `exp` at most five minutes ahead and a `jti` not seen before from that
client. The access token is short-lived (`expires_in` ≤ 300) and no refresh token
is issued. Errors follow RFC 6749 §5.2. Introspection follows RFC 7662 and token-introspection.md.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import jwt
from sqlalchemy import Engine, delete, insert
from sqlalchemy.exc import IntegrityError

from gateway.auth.issuer import ROLES, mint_token
from gateway.auth.smart import token_endpoint
from gateway.auth.tokens import TokenValidator, parse_scope
from gateway.domain.errors import NotAuthenticated
from gateway.persistence.tables import client_assertions
from gateway.settings import Settings

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_ALGORITHMS = ["RS384", "ES384"]
MAX_ASSERTION_LIFETIME = 300
ACCESS_TOKEN_LIFETIME = 300


class OAuthError(Exception):
    """An RFC 6749 §5.2 error response."""

    def __init__(self, error: str, description: str, status: int = 400) -> None:
        super().__init__(description)
        self.error, self.description, self.status = error, description, status

    def body(self) -> dict[str, str]:
        """The JSON error body."""
        return {"error": self.error, "error_description": self.description}


@dataclass(frozen=True, slots=True)
class BackendClient:
    """A registered Backend Services client: its keys, allowed scopes and role."""

    client_id: str
    keys: Mapping[str, jwt.PyJWK]
    scope: str
    roles: tuple[str, ...]


def load_clients(path: str) -> dict[str, BackendClient]:
    """Registered clients from `auth.backend_clients_path` (none when unset)."""
    if not path:
        return {}
    with open(path, encoding="utf-8") as fh:
        data = json.load(fh)
    clients: dict[str, BackendClient] = {}
    for client_id, entry in data.items():
        keys = {
            str(k["kid"]): jwt.PyJWK.from_dict(k) for k in entry["jwks"]["keys"] if k.get("kid")
        }
        roles = tuple(entry.get("roles", []))
        if not roles or set(roles) - set(ROLES):
            raise ValueError(f"client {client_id}: roles must be among {ROLES}")
        clients[client_id] = BackendClient(client_id, keys, str(entry.get("scope", "")), roles)
    return clients


class ReplayCache:
    """`jti` values seen per client until their assertion expires (SHALL reject replays).

    With an engine the record is the `client_assertions` table, so every replica sharing the
    database refuses a replay; without one (tests, tools) it is kept in this process.
    """

    def __init__(self, engine: Engine | None = None) -> None:
        self._engine = engine
        self._seen: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()

    def check_and_add(self, client_id: str, jti: str, expires: float) -> bool:
        """True the first time a (client, jti) is seen before it expires."""
        now = time.time()
        if self._engine is not None:
            return self._check_in_database(client_id, jti, expires, now)
        with self._lock:
            self._seen = {k: v for k, v in self._seen.items() if v > now}
            if (client_id, jti) in self._seen:
                return False
            self._seen[(client_id, jti)] = expires
            return True

    def _check_in_database(self, client_id: str, jti: str, expires: float, now: float) -> bool:
        assert self._engine is not None
        try:
            with self._engine.begin() as conn:
                conn.execute(
                    delete(client_assertions).where(
                        client_assertions.c.expires_at < datetime.fromtimestamp(now, UTC)
                    )
                )
                conn.execute(
                    insert(client_assertions).values(
                        client_id=client_id, jti=jti[:255],
                        expires_at=datetime.fromtimestamp(expires, UTC),
                    )
                )  # fmt: skip
        except IntegrityError:
            return False
        return True


class BackendTokenService:
    """Issues access tokens to registered Backend Services clients; introspects tokens."""

    def __init__(
        self, settings: Settings, validator: TokenValidator, engine: Engine | None = None
    ) -> None:
        self._settings = settings
        self._validator = validator
        self._clients = load_clients(settings.auth.backend_clients_path)
        self._replays = ReplayCache(engine)

    def token(self, form: Mapping[str, str]) -> dict[str, Any]:
        """The token response for a client_credentials request (RFC 6749 §4.4, §5.1)."""
        if form.get("grant_type") != "client_credentials":
            raise OAuthError("unsupported_grant_type", "only client_credentials is supported")
        if form.get("client_assertion_type") != ASSERTION_TYPE:
            raise OAuthError("invalid_client", "client_assertion_type must be jwt-bearer", 401)
        client, claims = self._verify_assertion(form.get("client_assertion", ""))
        granted = self._granted_scope(client, form.get("scope", ""))
        lifetime = min(ACCESS_TOKEN_LIFETIME, self._settings.auth.token_lifetime_seconds)
        token = mint_token(
            self._settings, role=client.roles[0], user=f"Device/{client.client_id}",
            scopes=granted, lifetime=lifetime,
            extra_claims={"client_id": client.client_id, "roles": list(client.roles),
                          "fhirUser": ""},
        )  # fmt: skip
        del claims
        return {"access_token": token, "token_type": "bearer", "expires_in": lifetime,
                "scope": granted}  # fmt: skip

    def _verify_assertion(self, assertion: str) -> tuple[BackendClient, dict[str, Any]]:
        try:
            header = jwt.get_unverified_header(assertion)
            unverified = jwt.decode(assertion, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise OAuthError("invalid_client", "client_assertion is not a JWT", 401) from None
        client = self._clients.get(str(unverified.get("iss", "")))
        if client is None:
            raise OAuthError("invalid_client", "unknown client (iss)", 401)
        key = client.keys.get(str(header.get("kid", "")))
        if key is None:
            raise OAuthError("invalid_client", "unknown kid for this client", 401)
        try:
            claims: dict[str, Any] = jwt.decode(
                assertion, key=key, algorithms=ASSERTION_ALGORITHMS,
                audience=token_endpoint(self._settings), issuer=client.client_id,
                leeway=self._settings.auth.leeway_seconds,
                options={"require": ["iss", "sub", "aud", "exp", "jti"]},
            )  # fmt: skip
        except jwt.PyJWTError as exc:
            raise OAuthError("invalid_client", f"client_assertion refused: {exc}", 401) from None
        if claims["sub"] != client.client_id:
            raise OAuthError("invalid_client", "sub must equal iss (the client_id)", 401)
        if (
            claims["exp"]
            > time.time() + MAX_ASSERTION_LIFETIME + self._settings.auth.leeway_seconds
        ):
            raise OAuthError(
                "invalid_client", "client_assertion exp is more than 5 minutes away", 401
            )
        if not self._replays.check_and_add(
            client.client_id, str(claims["jti"]), float(claims["exp"])
        ):
            raise OAuthError("invalid_client", "client_assertion jti was already used", 401)
        return client, claims

    @staticmethod
    def _granted_scope(client: BackendClient, requested: str) -> str:
        allowed = set(client.scope.split())
        wanted = requested.split() or sorted(allowed)
        refused = [s for s in wanted if s not in allowed or parse_scope(s) is None]
        if refused:
            raise OAuthError("invalid_scope", f"scopes not allowed for this client: {refused}")
        return " ".join(wanted)

    def introspect(self, token: str) -> dict[str, Any]:
        """RFC 7662 response: `active` plus scope, client_id, exp and context claims."""
        try:
            self._validator.validate(token)
        except NotAuthenticated:
            return {"active": False}
        claims = jwt.decode(token, options={"verify_signature": False})
        response: dict[str, Any] = {
            "active": True, "scope": claims.get("scope", ""),
            "client_id": claims.get("client_id") or claims.get("sub", ""),
            "exp": claims["exp"], "iss": claims["iss"], "sub": claims["sub"],
            "token_type": "bearer",
        }  # fmt: skip
        for key in ("fhirUser", "patient", "encounter", "fhirContext"):
            if claims.get(key):
                response[key] = claims[key]
        return response
