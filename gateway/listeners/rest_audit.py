"""Audit on the HTTP listener: the BALP REST audit hook and the Bulk Data `$export` routes."""

from __future__ import annotations

from aiohttp import web

from gateway.audit.rest import RestAudit
from gateway.listeners.bulk_export import register_bulk_export
from gateway.listeners.http import ENGINE, INTERACTION_HOOKS, SETTINGS


def attach_audit(app: web.Application) -> None:
    """Audit every FHIR interaction (reads and searches too) and serve `$export` of the trail."""
    app[INTERACTION_HOOKS].add(RestAudit(app[ENGINE], app[SETTINGS].http.fhir_base()))
    register_bulk_export(app)
