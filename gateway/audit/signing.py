"""Ed25519 signing keys of the audit trail, with rotation, and compact JWS (RFC 7515, EdDSA).

Keys live in one directory (default `<data_dir>/keys/audit`): `<kid>.pem` holds a private key
(PKCS#8, mode 0600), `active` names the key that signs, and `public.jwks.json` lists every public
key ever used (RFC 8037 OKP JWKs), so checkpoints signed before a rotation still verify. The key id
is the first 16 hex digits of the SHA-256 of the raw public key. An auditor needs only the JWKS.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from fhir_mapping.canonical import canonical_json

ACTIVE_FILE = "active"
JWKS_FILE = "public.jwks.json"


class SignatureError(ValueError):
    """A signature is malformed, made with an unknown key, or does not verify."""


def b64url(data: bytes) -> str:
    """Base64url without padding (RFC 7515 §2)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """Inverse of `b64url`."""
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def key_id_of(public: Ed25519PublicKey) -> str:
    """The key id: 16 hex digits of SHA-256 over the raw public key."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def public_jwk(public: Ed25519PublicKey, created: str) -> dict[str, str]:
    """The RFC 8037 JWK of a public key."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return {
        "kty": "OKP",
        "crv": "Ed25519",
        "x": b64url(raw),
        "kid": key_id_of(public),
        "use": "sig",
        "alg": "EdDSA",
        "created": created,
    }


@dataclass(frozen=True, slots=True)
class SigningKey:
    """The private key that signs now, with its id."""

    key_id: str
    private: Ed25519PrivateKey

    def sign_jws(self, payload: Mapping[str, Any]) -> str:
        """Compact JWS over the canonical JSON of `payload`."""
        header = b64url(canonical_json({"alg": "EdDSA", "kid": self.key_id}).encode())
        body = b64url(canonical_json(payload).encode("utf-8"))
        signature = self.private.sign(f"{header}.{body}".encode("ascii"))
        return f"{header}.{body}.{b64url(signature)}"


class AuditKeyring:
    """The signing-key directory: the active key, rotation, and the public JWKS."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def active(self) -> SigningKey:
        """The key that signs; created on first use."""
        marker = self.directory / ACTIVE_FILE
        if not marker.exists():
            return self.rotate()
        key_id = marker.read_text(encoding="ascii").strip()
        pem = (self.directory / f"{key_id}.pem").read_bytes()
        private = serialization.load_pem_private_key(pem, password=None)
        if not isinstance(private, Ed25519PrivateKey):
            raise SignatureError(f"{key_id}.pem is not an Ed25519 key")
        return SigningKey(key_id, private)

    def rotate(self) -> SigningKey:
        """Make a new key the active one; earlier public keys stay in the JWKS."""
        self.directory.mkdir(parents=True, exist_ok=True)
        private = Ed25519PrivateKey.generate()
        key_id = key_id_of(private.public_key())
        pem = private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        path = self.directory / f"{key_id}.pem"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(pem)
        jwks = self.public_jwks()
        created = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        jwks["keys"].append(public_jwk(private.public_key(), created))
        _write_atomic(self.directory / JWKS_FILE, json.dumps(jwks, indent=2))
        _write_atomic(self.directory / ACTIVE_FILE, key_id)
        return SigningKey(key_id, private)

    def public_jwks(self) -> dict[str, Any]:
        """Every public key this keyring has signed with, as a JWKS."""
        path = self.directory / JWKS_FILE
        if not path.exists():
            return {"keys": []}
        jwks: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        return jwks


def verify_jws(jws: str, jwks: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """Check a compact JWS against the JWKS; return (key id, payload) or raise SignatureError."""
    try:
        header_b64, body_b64, signature_b64 = jws.split(".")
        header = json.loads(b64url_decode(header_b64))
        payload: dict[str, Any] = json.loads(b64url_decode(body_b64))
        signature = b64url_decode(signature_b64)
    except (ValueError, UnicodeDecodeError) as exc:
        raise SignatureError(f"not a compact JWS ({exc})") from exc
    if header.get("alg") != "EdDSA":
        raise SignatureError(f"unexpected JWS alg {header.get('alg')!r}")
    key_id = str(header.get("kid", ""))
    for jwk in jwks.get("keys", ()):
        if jwk.get("kid") == key_id and jwk.get("crv") == "Ed25519":
            public = Ed25519PublicKey.from_public_bytes(b64url_decode(str(jwk["x"])))
            try:
                public.verify(signature, f"{header_b64}.{body_b64}".encode("ascii"))
            except InvalidSignature:
                raise SignatureError(f"signature by key {key_id} does not verify") from None
            return key_id, payload
    raise SignatureError(f"key {key_id!r} is not in the public key set")


def load_jwks(path: Path) -> dict[str, Any]:
    """A JWKS file (or a single JWK, wrapped)."""
    document: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return document if "keys" in document else {"keys": [document]}


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def keys_dir_for(data_dir: Path, configured: str) -> Path:
    """The signing-key directory: `audit.keys_dir`, else `<data_dir>/keys/audit`."""
    return Path(configured) if configured else data_dir / "keys" / "audit"
