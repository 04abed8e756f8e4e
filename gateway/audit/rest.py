"""The REST audit: one IHE BALP AuditEvent per FHIR interaction (per patient involved).

Subscribed to the FHIR facade's interaction hooks, so reads and searches are audited as well as
writes: an auditor can answer "who looked at this patient". Interactions refused with 401/403 are
not recorded here; the listener records them as DCM 110114 / 110113 security events.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import Engine

from fhir_mapping.balp import RestInteraction, balp_audit_event
from gateway.audit.trail import append

_SECURITY_STATUSES = frozenset({401, 403})


class RestAudit:
    """Interaction hook: append the BALP AuditEvent(s) of one interaction in one transaction."""

    def __init__(self, engine: Engine, fhir_base: str, observer: str = "hitl-gateway") -> None:
        self._engine = engine
        self._server = urlsplit(fhir_base).hostname or "localhost"
        self._observer = observer

    def __call__(self, record: Any) -> None:
        """Record `record` (a `gateway.fhir_api.core.InteractionRecord`)."""
        if record.status in _SECURITY_STATUSES:
            return
        principal = record.principal
        rest = RestInteraction(
            interaction=record.interaction,
            method=record.method,
            path=record.path,
            status=record.status,
            references=tuple(record.references),
            query=record.query,
            user=None if principal is None else principal.actor,
            client_id=str(getattr(principal, "client_id", "") or ""),
            client_address=record.remote,
            server_address=self._server,
            request_id=record.request_id,
            occurred_at=record.occurred_at,
            outcome_text=record.outcome_text,
        )
        patients = sorted(set(record.patients)) or [""]
        with self._engine.begin() as conn:
            for patient in patients:
                document = balp_audit_event(rest, patient_id=patient, observer=self._observer)
                append(conn, "AuditEvent", document)
