"""Bearer tokens from the embedded issuer: validation, RFC 6750 failures and SMART v2 scopes."""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway.auth.issuer import jwks, key_path, mint_token, public_jwk
from gateway.auth.tokens import (
    InsufficientScope,
    InvalidToken,
    MissingToken,
    TokenValidator,
    bearer_token,
    parse_scope,
    require_scope,
)
from gateway.domain.errors import Forbidden, NotAuthenticated
from gateway.settings import AuthSettings, HttpSettings, Settings, StorageSettings


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        storage=StorageSettings(data_dir=tmp_path),
        http=HttpSettings(base_url="http://127.0.0.1:8080"),
    )


def test_good_token_maps_to_principal(settings: Settings) -> None:
    token = mint_token(settings, role="reviewer", user="Practitioner/dr-1")
    principal = TokenValidator(settings).validate(token)
    assert principal.actor.reference == "Practitioner/dr-1"
    assert principal.roles == ("reviewer",)
    assert principal.actor.token_id
    require_scope(principal, "Task", "r")
    require_scope(principal, "Task", "u")
    require_scope(principal, "Task", "s")
    require_scope(principal, "Task", "c")
    with pytest.raises(InsufficientScope):
        require_scope(principal, "Task", "d")
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["aud"] == "http://127.0.0.1:8080/fhir"
    assert claims["iss"] == "http://127.0.0.1:8080/fhir/auth"
    assert {"exp", "iat", "nbf", "jti", "sub", "fhirUser"} <= set(claims)
    assert jwt.get_unverified_header(token)["kid"] == jwks(settings)["keys"][0]["kid"]


def test_key_is_private_to_the_owner(settings: Settings) -> None:
    mint_token(settings, role="auditor", user="Practitioner/a-1")
    assert stat.S_IMODE(os.stat(key_path(settings)).st_mode) == 0o600
    assert "d" not in jwks(settings)["keys"][0]


def test_no_token_and_malformed_header() -> None:
    with pytest.raises(MissingToken):
        bearer_token(None)
    with pytest.raises(InvalidToken):
        bearer_token("Basic dXNlcjpwYXNz")


def test_expired_token_is_rejected(settings: Settings) -> None:
    token = mint_token(settings, role="reviewer", user="Practitioner/dr-1", lifetime=-120)
    with pytest.raises(InvalidToken, match="expired"):
        TokenValidator(settings).validate(token)


def test_wrong_audience_is_rejected(settings: Settings) -> None:
    token = mint_token(settings, role="reviewer", user="Practitioner/dr-1")
    # Same key, same issuer, another FHIR base: only the audience differs.
    other = Settings(
        storage=settings.storage,
        http=HttpSettings(base_url="http://127.0.0.1:9999"),
        auth=AuthSettings(issuer=settings.auth_issuer),
    )
    with pytest.raises(InvalidToken, match="audience"):
        TokenValidator(other).validate(token)


def test_wrong_issuer_is_rejected(settings: Settings) -> None:
    token = mint_token(settings, role="reviewer", user="Practitioner/dr-1")
    strict = Settings(
        storage=settings.storage,
        http=settings.http,
        auth=AuthSettings(issuer="https://idp.example.org"),
    )
    with pytest.raises(InvalidToken, match="issuer"):
        TokenValidator(strict).validate(token)


def test_token_signed_by_another_key_is_rejected(settings: Settings) -> None:
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    kid = public_jwk(stranger)["kid"]
    now = int(time.time())
    claims = {
        "iss": settings.auth_issuer,
        "aud": settings.http.fhir_base(),
        "sub": "Practitioner/x",
        "iat": now,
        "exp": now + 60,
        "jti": "j",
    }
    unknown_kid = jwt.encode(claims, stranger, algorithm="RS256", headers={"kid": kid})
    with pytest.raises(InvalidToken, match="kid"):
        TokenValidator(settings).validate(unknown_kid)
    trusted_kid = jwks(settings)["keys"][0]["kid"]
    forged = jwt.encode(claims, stranger, algorithm="RS256", headers={"kid": trusted_kid})
    with pytest.raises(InvalidToken, match="signature"):
        TokenValidator(settings).validate(forged)


def test_jwks_file_is_used_when_configured(settings: Settings, tmp_path: Path) -> None:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(jwks(settings)))
    configured = Settings(
        storage=settings.storage, http=settings.http, auth=AuthSettings(jwks_path=str(path))
    )
    token = mint_token(settings, role="reviewer", user="Practitioner/dr-1")
    assert TokenValidator(configured).validate(token).actor.reference == "Practitioner/dr-1"


def test_missing_scope_is_forbidden(settings: Settings) -> None:
    token = mint_token(settings, role="auditor", user="Practitioner/a-1")
    principal = TokenValidator(settings).validate(token)
    with pytest.raises(Forbidden):
        require_scope(principal, "Task", "u")
    require_scope(principal, "Provenance", "s")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("user/Task.rus", ("user", "Task", {"r", "u", "s"})),
        ("system/*.cruds", ("system", "*", set("cruds"))),
        ("patient/Observation.rs?category=x", ("patient", "Observation", {"r", "s"})),
        ("user/Task.ur", None),  # letters out of the cruds order are not honoured
        ("user/Task.read", ("user", "Task", {"r", "s"})),  # v1, permission-v1 advertised
        ("user/Task.write", ("user", "Task", {"c", "u", "d"})),
        ("system/*.*", ("system", "*", set("cruds"))),
        ("user/Task.", None),
        ("openid", None),
    ],
)
def test_scope_grammar(text: str, expected: tuple[str, str, set[str]] | None) -> None:
    scope = parse_scope(text)
    if expected is None:
        assert scope is None
    else:
        assert scope is not None
        assert (scope.context, scope.resource_type, set(scope.interactions)) == expected


def test_patient_scopes_need_a_launch_patient(settings: Settings) -> None:
    token = mint_token(
        settings, role="reviewer", user="Practitioner/dr-1", scopes="patient/Task.rus"
    )
    principal = TokenValidator(settings).validate(token)
    with pytest.raises(InsufficientScope):
        require_scope(principal, "Task", "r")
    launched = mint_token(
        settings, role="reviewer", user="Practitioner/dr-1", scopes="patient/Task.rus",
        patient="Patient/pat-1",
    )  # fmt: skip
    principal = TokenValidator(settings).validate(launched)
    assert principal.patient == "pat-1"
    require_scope(principal, "Task", "r")


def test_unknown_role_is_refused(settings: Settings) -> None:
    with pytest.raises(ValueError, match="role"):
        mint_token(settings, role="janitor", user="Practitioner/x")


def test_errors_are_in_the_gateway_tree() -> None:
    assert issubclass(InvalidToken, NotAuthenticated)
    assert issubclass(MissingToken, NotAuthenticated)
    assert issubclass(InsufficientScope, Forbidden)
