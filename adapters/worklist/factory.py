"""Builds the configured worklist updaters; called by the composition root only.

Each `[[worklist.destinations]]` table names one peer and its kind; credentials are read from
the files the table points at, so no secret is kept in settings or environment dumps.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping

from adapters.worklist.fhir_service_request import FhirServiceRequestUpdater
from adapters.worklist.hl7_render import MESSAGES, OMI_O23, Hl7Profile
from adapters.worklist.http_peer import read_secret
from adapters.worklist.mllp import MllpWorklistUpdater
from adapters.worklist.ups_rs import UpsRsWorklistUpdater
from adapters.worklist.webhook import WebhookWorklistUpdater
from gateway.domain.errors import InvalidInput
from gateway.domain.priority import (
    HL7_0027_CODES,
    HL7_0485_CODES,
    UPS_CODES,
    Priority,
    parse_overrides,
)
from gateway.ports import WorklistUpdater
from gateway.settings import SettingsError, WorklistDestination, WorklistSettings

HL7_MLLP = "hl7-mllp"
UPS_RS = "ups-rs"
FHIR_SERVICE_REQUEST = "fhir-service-request"
WEBHOOK = "webhook"
KINDS = (HL7_MLLP, UPS_RS, FHIR_SERVICE_REQUEST, WEBHOOK)


def tls_context(destination: WorklistDestination) -> ssl.SSLContext | None:
    """A verifying client TLS context for an MLLP destination with tls = true."""
    if not destination.tls:
        return None
    context = ssl.create_default_context(cafile=destination.tls_ca_file or None)
    if destination.tls_cert_file:
        context.load_cert_chain(destination.tls_cert_file, destination.tls_key_file or None)
    return context


def _check(destination: WorklistDestination, seen: set[str]) -> None:
    where = f"worklist.destinations[{destination.name!r}]"
    if not destination.name or destination.name in seen:
        raise SettingsError(f"{where}: every destination needs a unique name")
    if destination.kind not in KINDS:
        raise SettingsError(f"{where}: kind must be one of {KINDS}")
    if destination.kind == HL7_MLLP:
        if not destination.host or destination.port <= 0:
            raise SettingsError(f"{where}: hl7-mllp needs host and port")
        if destination.message not in MESSAGES:
            raise SettingsError(f"{where}: message must be one of {MESSAGES}")
    elif not destination.url.startswith(("http://", "https://")):
        raise SettingsError(f"{where}: {destination.kind} needs an http(s) url")
    if destination.kind == WEBHOOK and not destination.secret_file:
        raise SettingsError(f"{where}: a webhook needs secret_file")
    try:
        overrides(destination)
    except InvalidInput as exc:
        raise SettingsError(f"{where}: priority_overrides: {exc.message}") from exc


def overrides(destination: WorklistDestination) -> dict[Priority, str]:
    """The destination's priority codes that replace the mapping table's, validated."""
    if not destination.priority_overrides:
        return {}
    if destination.kind == HL7_MLLP:
        allowed = HL7_0485_CODES if destination.message == OMI_O23 else HL7_0027_CODES
    elif destination.kind == UPS_RS:
        allowed = UPS_CODES
    else:
        raise InvalidInput(f"{destination.kind} sends the FHIR code itself; nothing to override")
    return parse_overrides(destination.priority_overrides, allowed)


def build_updater(destination: WorklistDestination, settings: WorklistSettings) -> WorklistUpdater:
    """The updater for one destination."""
    timeout = destination.timeout_seconds or settings.ack_timeout_seconds
    token = read_secret(destination.bearer_token_file)
    if destination.kind == HL7_MLLP:
        profile = Hl7Profile(
            message=destination.message,
            sending_application=settings.sending_application,
            receiving_application=destination.receiving_application,
            receiving_facility=destination.receiving_facility,
            overrides=overrides(destination),
        )
        return MllpWorklistUpdater(
            destination.host,
            destination.port,
            timeout=timeout,
            profile=profile,
            tls=tls_context(destination),
        )
    if destination.kind == UPS_RS:
        return UpsRsWorklistUpdater(
            destination.url, timeout=timeout, bearer_token=token, overrides=overrides(destination)
        )
    if destination.kind == FHIR_SERVICE_REQUEST:
        return FhirServiceRequestUpdater(
            destination.url,
            timeout=timeout,
            bearer_token=token,
            accession_system=destination.accession_system,
        )
    return WebhookWorklistUpdater(
        destination.url,
        read_secret(destination.secret_file),
        timeout=timeout,
        bearer_token=token,
    )


def build_updaters(settings: WorklistSettings) -> Mapping[str, WorklistUpdater]:
    """Every configured destination's updater, by destination name; bad tables raise."""
    seen: set[str] = set()
    updaters: dict[str, WorklistUpdater] = {}
    for destination in settings.all_destinations():
        _check(destination, seen)
        seen.add(destination.name)
        updaters[destination.name] = build_updater(destination, settings)
    return updaters


def build_alert_updater(settings: WorklistSettings) -> WorklistUpdater | None:
    """The signed webhook that receives dead-letter alerts, when one is configured."""
    if not settings.alert_webhook_url:
        return None
    return WebhookWorklistUpdater(
        settings.alert_webhook_url,
        read_secret(settings.alert_secret_file),
        timeout=settings.ack_timeout_seconds,
    )


def build_encounter_lookup(settings: WorklistSettings) -> FhirServiceRequestUpdater | None:
    """The EHR client named by `worklist.encounter_lookup`, when one is configured."""
    if not settings.encounter_lookup:
        return None
    for destination in settings.all_destinations():
        if destination.name == settings.encounter_lookup:
            if destination.kind != FHIR_SERVICE_REQUEST:
                break
            return FhirServiceRequestUpdater(
                destination.url,
                timeout=destination.timeout_seconds or settings.ack_timeout_seconds,
                bearer_token=read_secret(destination.bearer_token_file),
                accession_system=destination.accession_system,
            )
    raise SettingsError(
        f"worklist.encounter_lookup {settings.encounter_lookup!r} names no "
        "fhir-service-request destination"
    )
