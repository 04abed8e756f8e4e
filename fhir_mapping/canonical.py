"""Canonical JSON: the exact bytes that are stored, hashed and signed."""

from __future__ import annotations

import hashlib
import json
from typing import Any


def canonical_json(document: Any) -> str:
    """Sorted keys, no insignificant white space, UTF-8 text (RFC 8785 style for our documents)."""
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def sha256_hex(text: str) -> str:
    """SHA-256 of text encoded as UTF-8, lower-case hex."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
