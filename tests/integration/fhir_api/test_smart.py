"""standards.md §8 "SMART" checklist lines: bearer tokens, scopes, patient compartment, discovery,
Backend Services token endpoint, introspection, JWKS rotation, PHI masking, audited failures."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from aiohttp.test_utils import TestClient, TestServer
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from sqlalchemy import Engine

from fhir_mapping import codesystems as cs
from gateway.auth import tokens
from gateway.auth.tokens import TokenValidator
from gateway.listeners.http import build_http_app
from gateway.review_service import ReviewService
from tests.integration.fhir_api.conftest import BASE, FhirGateway, make_settings, seed
from tests.unit.fhir.samples import decision_body

pytestmark = pytest.mark.integration
TOKEN_URL = f"{BASE}/auth/token"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


async def test_requests_without_token_are_401_and_invalid_tokens_401_invalid_token(
    fhir: FhirGateway,
) -> None:
    response = await fhir.client.get(f"/fhir/Task/{fhir.task_id}")
    assert response.status == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer ")
    assert "error=" not in response.headers["WWW-Authenticate"]
    for bad in (fhir.token(lifetime=-300), "not.a.jwt", fhir.token() + "x"):
        response = await fhir.client.get(f"/fhir/Task/{fhir.task_id}", headers=fhir.auth(bad))
        assert response.status == 401
        assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]


async def test_token_whose_aud_is_not_our_fhir_base_is_rejected(fhir: FhirGateway) -> None:
    other = fhir.token(extra_claims={"aud": "https://other.example/fhir"})
    response = await fhir.client.get(f"/fhir/Task/{fhir.task_id}", headers=fhir.auth(other))
    assert response.status == 401
    assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]


async def test_scope_letters_r_s_u_c_allow_only_their_interactions(fhir: FhirGateway) -> None:
    def tok(scope: str) -> str:
        return fhir.token(scopes=scope)

    task_url = f"/fhir/Task/{fhir.task_id}"
    assert (await fhir.client.get(task_url, headers=fhir.auth(tok("user/Task.r")))).status == 200
    vread = f"{task_url}/_history/1"
    assert (await fhir.client.get(vread, headers=fhir.auth(tok("user/Task.r")))).status == 200
    search = await fhir.client.get("/fhir/Task", headers=fhir.auth(tok("user/Task.r")))
    assert search.status == 403
    assert 'error="insufficient_scope"' in search.headers["WWW-Authenticate"]
    assert (
        await fhir.client.get("/fhir/Task", headers=fhir.auth(tok("user/Task.s")))
    ).status == 200
    assert (await fhir.client.get(task_url, headers=fhir.auth(tok("user/Task.s")))).status == 403
    task, etag = await fhir.read_task()
    put = await fhir.put_task(dict(task, status="in-progress"), etag, tok("user/Task.rs"))
    assert put.status == 403
    put = await fhir.put_task(dict(task, status="in-progress"), etag, tok("user/Task.u"))
    assert put.status == 200
    post = await fhir.client.post("/fhir/Task", json={}, headers=fhir.auth(tok("user/Task.rus")))
    assert post.status == 403


async def test_malformed_scope_order_is_not_honoured_and_v1_is_mapped(fhir: FhirGateway) -> None:
    task_url = f"/fhir/Task/{fhir.task_id}"
    malformed = fhir.token(scopes="user/Task.sr")
    assert (await fhir.client.get(task_url, headers=fhir.auth(malformed))).status == 403
    smart = await (await fhir.client.get("/.well-known/smart-configuration")).json()
    assert "permission-v1" in smart["capabilities"]
    v1 = fhir.token(scopes="user/Task.read")
    assert (await fhir.client.get(task_url, headers=fhir.auth(v1))).status == 200
    assert (await fhir.client.get("/fhir/Task", headers=fhir.auth(v1))).status == 200
    task, etag = await fhir.read_task()
    assert (await fhir.put_task(dict(task, status="accepted"), etag, v1)).status == 403


async def test_patient_scope_cannot_reach_another_patients_task(fhir: FhirGateway) -> None:
    scopes = "launch/patient patient/Task.rs patient/Provenance.rs patient/ImagingStudy.rs"
    own = fhir.token(scopes=scopes, patient="Patient/pat-1")
    other = fhir.token(scopes=scopes, patient="Patient/pat-2")
    none = fhir.token(scopes=scopes)
    url = f"/fhir/Task/{fhir.task_id}"
    assert (await fhir.client.get(url, headers=fhir.auth(own))).status == 200
    assert (await fhir.client.get(url, headers=fhir.auth(other))).status == 404
    assert (await fhir.client.get(url, headers=fhir.auth(none))).status == 403
    assert (await fhir.get("Task", own))["total"] == 1
    assert (await fhir.get("Task", other))["total"] == 0
    assert (await fhir.get("Task?patient=Patient/pat-1", other))["total"] == 0
    assert (await fhir.get("Provenance", other))["total"] == 0
    assert (await fhir.get("Provenance", own))["total"] >= 1
    assert (await fhir.get("ImagingStudy", other))["total"] == 0


async def test_smart_configuration_has_the_required_fields(fhir: FhirGateway) -> None:
    for path in ("/.well-known/smart-configuration", "/fhir/.well-known/smart-configuration"):
        smart = await (await fhir.client.get(path)).json()
        assert smart["token_endpoint"] == TOKEN_URL
        assert smart["grant_types_supported"] == ["client_credentials"]
        assert "client-confidential-asymmetric" in smart["capabilities"]
        assert smart["code_challenge_methods_supported"] == ["S256"]
        assert "plain" not in smart["code_challenge_methods_supported"]
        assert {"issuer", "jwks_uri"} <= set(smart)


async def test_provenance_agent_is_the_token_fhir_user_and_audit_policy_carries_token_id(
    fhir: FhirGateway,
) -> None:
    token = fhir.token(user="Practitioner/dr-2")
    jti = jwt.decode(token, options={"verify_signature": False})["jti"]
    task, etag = await fhir.read_task()
    response = await fhir.put_task(decision_body(task), etag, token)
    assert response.status == 200
    provenance = fhir.audit("Provenance")[-1]
    assert provenance["agent"][0]["who"] == {"reference": "Practitioner/dr-2"}
    recorded = fhir.events("decision-recorded")[-1]
    user = next(a for a in recorded["agent"] if a["requestor"])
    assert user["who"]["reference"] == "Practitioner/dr-2"
    assert user["policy"] == [jti]


async def test_failed_authentication_and_authorization_are_audited(fhir: FhirGateway) -> None:
    await fhir.client.get(f"/fhir/Task/{fhir.task_id}")
    auditor = fhir.token(role="auditor", user="Practitioner/aud-1")
    await fhir.client.get(f"/fhir/Task/{fhir.task_id}", headers=fhir.auth(auditor))
    types = [e["type"]["code"] for e in fhir.audit("AuditEvent")]
    assert "110114" in types  # User Authentication
    alert = [e for e in fhir.audit("AuditEvent") if e["type"]["code"] == "110113"]
    assert len(alert) == 1  # Security Alert for the refused scope
    assert alert[0]["outcome"] == "4"
    assert alert[0]["agent"][0]["who"]["reference"] == "Practitioner/aud-1"


async def test_auditor_without_phi_rights_sees_patients_masked(fhir: FhirGateway) -> None:
    plain = fhir.token(role="auditor", user="Practitioner/aud-1")
    phi = fhir.token(role="auditor-phi", user="Practitioner/aud-2")
    masked = await fhir.get("AuditEvent?patient=Patient/pat-1", plain)
    clear = await fhir.get("AuditEvent?patient=Patient/pat-1", phi)
    assert masked["total"] == clear["total"] > 0
    # The caller's own query is echoed in the links; the records themselves are masked.
    masked_records = json.dumps([e["resource"] for e in masked["entry"]])
    clear_records = json.dumps([e["resource"] for e in clear["entry"]])
    assert "Patient/pat-1" in clear_records
    assert "pat-1" not in masked_records
    for entry in masked["entry"]:
        labels = entry["resource"]["meta"]["security"]
        assert {
            "system": cs.V3_OBSERVATION_VALUE,
            "code": "REDACTED",
            "display": "redacted",
        } in labels
        patients = [e for e in entry["resource"]["entity"] if e.get("role", {}).get("code") == "1"]
        assert patients[0]["what"]["identifier"]["system"] == "urn:hitl-gateway:patient-pseudonym"


# --- Backend Services (token endpoint of the embedded issuer) ---------------------------------


def _jwk(key: Any, kid: str, alg: str) -> dict[str, Any]:
    jwk: dict[str, Any] = json.loads(
        jwt.algorithms.get_default_algorithms()[alg].to_jwk(key.public_key())
    )
    return {**jwk, "kid": kid, "alg": alg, "use": "sig"}


class Backend:
    def __init__(self, client: TestClient[Any, Any], keys: dict[str, tuple[Any, str]]) -> None:
        self.client, self.keys = client, keys

    def assertion(self, kid: str = "rs", **claims: Any) -> str:
        key, alg = self.keys.get(kid, self.keys["rs"])
        now = int(time.time())
        body = {"iss": "pacs-1", "sub": "pacs-1", "aud": TOKEN_URL, "exp": now + 240,
                "jti": uuid.uuid4().hex, **claims}  # fmt: skip
        return jwt.encode(body, key, algorithm=alg, headers={"kid": kid, "typ": "JWT"})

    async def token(self, assertion: str, scope: str = "system/ImagingStudy.c") -> Any:
        form = {"grant_type": "client_credentials", "client_assertion_type": ASSERTION_TYPE,
                "client_assertion": assertion, "scope": scope}  # fmt: skip
        response = await self.client.post("/fhir/auth/token", data=form)
        return response.status, await response.json()


@pytest.fixture
async def backend(engine: Engine, tmp_path: Path) -> AsyncIterator[Backend]:
    rs = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    es = ec.generate_private_key(ec.SECP384R1())
    clients = {
        "pacs-1": {
            "jwks": {"keys": [_jwk(rs, "rs", "RS384"), _jwk(es, "es", "ES384")]},
            "scope": "system/ImagingStudy.c system/Task.rs",
            "roles": ["pacs"],
        }
    }
    path = tmp_path / "clients.json"
    path.write_text(json.dumps(clients))
    settings = make_settings(tmp_path, backend_clients_path=str(path))
    review = ReviewService(engine, settings)
    seed(engine, review)
    app = build_http_app(settings, engine, review, TokenValidator(settings), dict)
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        yield Backend(client, {"rs": (rs, "RS384"), "es": (es, "ES384")})


@pytest.mark.parametrize("kid", ["rs", "es"])
async def test_backend_jwt_rs384_and_es384_are_accepted(backend: Backend, kid: str) -> None:
    status, body = await backend.token(backend.assertion(kid))
    assert status == 200, body
    assert body["token_type"] == "bearer"
    assert body["expires_in"] <= 300
    assert "refresh_token" not in body
    assert body["scope"] == "system/ImagingStudy.c"
    claims = jwt.decode(body["access_token"], options={"verify_signature": False})
    assert claims["exp"] - claims["iat"] <= 300
    search = await backend.client.get(
        "/fhir/Task", headers={"Authorization": f"Bearer {body['access_token']}"}
    )
    assert search.status == 403  # the granted scope is only ImagingStudy.c


async def test_backend_jwt_refusals(backend: Backend) -> None:
    now = int(time.time())
    cases = {
        "exp more than 5 minutes ahead": backend.assertion(exp=now + 900),
        "iss differs from sub": backend.assertion(sub="someone-else"),
        "wrong aud": backend.assertion(aud=f"{BASE}/other"),
        "unknown kid": backend.assertion(kid="unknown"),
        "unknown client": backend.assertion(iss="intruder", sub="intruder"),
        "expired": backend.assertion(exp=now - 600),
    }
    for name, assertion in cases.items():
        status, body = await backend.token(assertion)
        assert status == 401, name
        assert body["error"] == "invalid_client", name
    replayed = backend.assertion()
    assert (await backend.token(replayed))[0] == 200
    status, body = await backend.token(replayed)
    assert (status, body["error"]) == (401, "invalid_client")
    status, body = await backend.token(backend.assertion(), scope="system/AuditEvent.rs")
    assert (status, body["error"]) == (400, "invalid_scope")


async def test_introspection_returns_active_scope_client_id_exp_and_context(
    backend: Backend,
) -> None:
    _, issued = await backend.token(backend.assertion(), scope="system/Task.rs")
    access = issued["access_token"]
    headers = {"Authorization": f"Bearer {access}"}
    response = await backend.client.post(
        "/fhir/auth/introspect", data={"token": access}, headers=headers
    )
    body = await response.json()
    assert body["active"] is True
    assert body["scope"] == "system/Task.rs"
    assert body["client_id"] == "pacs-1"
    assert body["exp"] > time.time()
    gone = await backend.client.post(
        "/fhir/auth/introspect", data={"token": "x.y.z"}, headers=headers
    )
    assert (await gone.json()) == {"active": False}


# --- An external issuer: JWKS file, rotation, RS384/ES384 ------------------------------------


async def test_jwks_is_cached_and_a_rotated_key_is_picked_up(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tokens, "MIN_REFRESH_SECONDS", 0.0)
    old = ec.generate_private_key(ec.SECP384R1())
    new = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwks_file = tmp_path / "jwks.json"
    jwks_file.write_text(json.dumps({"keys": [_jwk(old, "k1", "ES384")]}))
    settings = make_settings(tmp_path, issuer="https://idp.example", jwks_path=str(jwks_file))
    validator = TokenValidator(settings)

    def token(key: Any, kid: str, alg: str) -> str:
        now = int(time.time())
        claims = {"iss": "https://idp.example", "aud": BASE, "sub": "u",
                  "fhirUser": "Practitioner/x", "scope": "user/Task.rs", "iat": now, "nbf": now,
                  "exp": now + 60, "jti": uuid.uuid4().hex, "roles": ["reviewer"]}  # fmt: skip
        return jwt.encode(claims, key, algorithm=alg, headers={"kid": kid})

    assert validator.validate(token(old, "k1", "ES384")).actor.reference == "Practitioner/x"
    with pytest.raises(tokens.InvalidToken):
        validator.validate(token(new, "k2", "RS384"))
    jwks_file.write_text(json.dumps({"keys": [_jwk(old, "k1", "ES384"), _jwk(new, "k2", "RS384")]}))
    assert validator.validate(token(new, "k2", "RS384")).roles == ("reviewer",)
    wrong_issuer = jwt.encode(
        {"iss": "https://evil.example", "aud": BASE, "sub": "u", "iat": 0, "exp": time.time() + 60,
         "jti": "j"}, new, algorithm="RS384", headers={"kid": "k2"},
    )  # fmt: skip
    with pytest.raises(tokens.InvalidToken):
        validator.validate(wrong_issuer)
    del engine


def test_a_replayed_jti_is_refused_by_every_replica_sharing_the_database(engine: Engine) -> None:
    from gateway.auth.backend import ReplayCache

    first, second = ReplayCache(engine), ReplayCache(engine)
    expires = time.time() + 120
    assert first.check_and_add("pacs-1", "jti-1", expires)
    assert not second.check_and_add("pacs-1", "jti-1", expires)
    assert second.check_and_add("pacs-2", "jti-1", expires)  # per client
    assert first.check_and_add("pacs-1", "jti-old", time.time() - 1)
    assert second.check_and_add("pacs-1", "jti-old", expires)  # expired records are dropped
