"""Per-interaction access rules beyond the scope letter: patient compartment and PHI masking.

SMART App Launch 2.2 scopes-and-launch-context: a `patient/` scope grants access only to the
launch patient's compartment; a `user/` or `system/` scope is not limited that way. Auditors
without the `auditor-phi` role see patient identifiers and names masked.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from fhir_mapping import codesystems as cs
from gateway.auth.tokens import Principal
from gateway.domain.errors import NotFound

PHI_ROLES = frozenset({"auditor-phi", "reviewer", "secondary-reviewer", "admin"})
MASKED = "masked"
PSEUDONYM_SYSTEM = "urn:hitl-gateway:patient-pseudonym"
REDACTED = {"system": cs.V3_OBSERVATION_VALUE, "code": "REDACTED", "display": "redacted"}


def compartment(principal: Principal | None, resource_type: str, letter: str) -> str | None:
    """The only patient id the caller may see, or None when it is not limited to one patient."""
    if principal is None:
        return None
    if any(
        s.context in {"user", "system"} and s.allows(resource_type, letter)
        for s in principal.scopes
    ):
        return None
    return principal.patient or "\x00no-launch-patient"


def check_compartment(allowed: str | None, patient_id: str, what: str) -> None:
    """NotFound unless the resource is in the caller's patient compartment (404 hides it)."""
    if allowed is not None and patient_id != allowed:
        raise NotFound(f"{what} is not known")


def may_see_phi(principal: Principal | None) -> bool:
    """True unless the caller is an auditor without PHI rights."""
    if principal is None:
        return True
    roles = set(principal.roles)
    return not roles or bool(roles & PHI_ROLES) or "auditor" not in roles


def pseudonym(patient_id: str) -> str:
    """A stable pseudonym for a patient id (SHA-256, shortened)."""
    return hashlib.sha256(patient_id.encode("utf-8")).hexdigest()[:16]


def mask_phi(resource: Mapping[str, Any]) -> dict[str, Any]:
    """The resource with Patient references replaced by pseudonyms and labelled REDACTED."""
    if resource.get("resourceType") == "Bundle":
        bundle = dict(resource)
        bundle["entry"] = [
            {**e, "resource": mask_phi(e["resource"])} if "resource" in e else e
            for e in resource.get("entry", [])
        ]
        return bundle
    masked = _mask(resource)
    meta = dict(masked.get("meta", {}))
    meta["security"] = [*meta.get("security", []), dict(REDACTED)]
    masked["meta"] = meta
    return masked


def _mask(value: Mapping[str, Any]) -> dict[str, Any]:
    reference = value.get("reference")
    if isinstance(reference, str) and reference.startswith("Patient/"):
        return {
            "type": "Patient",
            "identifier": {
                "system": PSEUDONYM_SYSTEM,
                "value": pseudonym(reference.removeprefix("Patient/")),
            },
            "display": MASKED,
        }
    out: dict[str, Any] = {}
    for key, item in value.items():
        if isinstance(item, Mapping):
            out[key] = _mask(item)
        elif isinstance(item, list):
            out[key] = [_mask(i) if isinstance(i, Mapping) else i for i in item]
        else:
            out[key] = item
    # AuditEvent: the patient entity's name would show the patient (BALP patient entity).
    role = out.get("role")
    if isinstance(role, Mapping) and role.get("code") == "1" and "name" in out:
        out["name"] = MASKED
    return out
