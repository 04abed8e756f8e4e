"""Destinations from configuration, the updater for each kind, and the neutral payload."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from adapters.worklist.factory import build_alert_updater, build_encounter_lookup, build_updaters
from adapters.worklist.fhir_service_request import FhirServiceRequestUpdater
from adapters.worklist.mllp import MllpWorklistUpdater
from adapters.worklist.ups_rs import UpsRsWorklistUpdater
from adapters.worklist.webhook import WebhookWorklistUpdater
from gateway.domain.errors import InvalidInput
from gateway.domain.priority import Priority
from gateway.domain.worklist import PRIORITY_CHANGE_KIND, PriorityChange
from gateway.ports import WorklistMessage
from gateway.settings import SettingsError, WorklistSettings, load_settings

TOML = """
[worklist]
hl7_host = "ris.local"
hl7_port = 2575

[[worklist.destinations]]
name = "ris-legacy"
kind = "hl7-mllp"
host = "old-ris.local"
port = 2576
message = "ORM^O01"
tls = true

[[worklist.destinations]]
name = "ups"
kind = "ups-rs"
url = "https://wm.local/dicom-web"

[[worklist.destinations]]
name = "ehr"
kind = "fhir-service-request"
url = "https://ehr.local/fhir"
accession_system = "urn:oid:1.2.3"

[[worklist.destinations]]
name = "vendor"
kind = "webhook"
url = "https://vendor.local/hook"
secret_file = "{secret}"
"""


def test_several_destinations_from_toml(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("k3y\n")
    config = tmp_path / "gateway.toml"
    config.write_text(TOML.format(secret=secret))

    settings = load_settings(config, environ={})

    names = [d.name for d in settings.worklist.all_destinations()]
    assert names == ["hl7", "ris-legacy", "ups", "ehr", "vendor"]
    updaters = build_updaters(settings.worklist)
    assert isinstance(updaters["hl7"], MllpWorklistUpdater)
    assert isinstance(updaters["ris-legacy"], MllpWorklistUpdater)
    assert isinstance(updaters["ups"], UpsRsWorklistUpdater)
    assert isinstance(updaters["ehr"], FhirServiceRequestUpdater)
    assert isinstance(updaters["vendor"], WebhookWorklistUpdater)
    assert build_alert_updater(settings.worklist) is None


def test_destinations_from_an_environment_variable() -> None:
    settings = load_settings(
        environ={
            "HITL_GATEWAY_WORKLIST__DESTINATIONS": '[{"name": "ups", "kind": "ups-rs", '
            '"url": "http://127.0.0.1:9/ups"}]'
        }
    )
    (destination,) = settings.worklist.all_destinations()
    assert (destination.name, destination.kind) == ("ups", "ups-rs")


@pytest.mark.parametrize(
    ("table", "error"),
    [
        ({"name": "", "kind": "ups-rs", "url": "http://x"}, "unique name"),
        ({"name": "a", "kind": "carrier-pigeon"}, "kind must be one of"),
        ({"name": "a", "kind": "hl7-mllp", "host": "h"}, "host and port"),
        ({"name": "a", "kind": "hl7-mllp", "host": "h", "port": 1, "message": "ADT"}, "message"),
        ({"name": "a", "kind": "fhir-service-request", "url": "ftp://x"}, "http"),
        ({"name": "a", "kind": "webhook", "url": "http://x"}, "secret_file"),
    ],
)
def test_bad_destination_tables_are_refused(table: dict[str, object], error: str) -> None:
    variable = {"HITL_GATEWAY_WORKLIST__DESTINATIONS": json.dumps([table])}
    destinations = load_settings(environ=variable).worklist.destinations
    with pytest.raises(SettingsError, match=error):
        build_updaters(WorklistSettings(destinations=destinations))


def test_unknown_keys_in_a_destination_are_refused() -> None:
    with pytest.raises(SettingsError, match=r"worklist\.destinations"):
        load_settings(environ={"HITL_GATEWAY_WORKLIST__DESTINATIONS": '[{"nmae": "x"}]'})


def test_duplicate_names_are_refused() -> None:
    settings = load_settings(
        environ={
            "HITL_GATEWAY_WORKLIST__HL7_HOST": "ris",
            "HITL_GATEWAY_WORKLIST__HL7_PORT": "1",
            "HITL_GATEWAY_WORKLIST__DESTINATIONS": '[{"name": "hl7", "host": "b", "port": 2}]',
        }
    )
    with pytest.raises(SettingsError, match="unique name"):
        build_updaters(settings.worklist)


WHEN = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def test_priority_change_round_trips_and_refuses_gaps() -> None:
    change = PriorityChange(
        idempotency_key="t:2",
        study_instance_uid="1.2.3",
        accession_number="ACC",
        patient_id="PAT",
        priority=Priority.ASAP,
        requested_at=WHEN,
        encounter_id="enc",
    )
    assert PriorityChange.from_json(change.to_json()) == change
    with pytest.raises(InvalidInput, match="accession_number"):
        PriorityChange("t:2", "1.2.3", " ", "PAT", Priority.STAT, WHEN)
    with pytest.raises(InvalidInput):
        PriorityChange.from_json('{"schema": 99}')
    with pytest.raises(InvalidInput):
        PriorityChange.from_json("MSH|^~\\&|")


@pytest.mark.parametrize(
    ("table", "error"),
    [
        ({"kind": "hl7-mllp", "host": "h", "port": 1, "priority_overrides": ["soon=A"]}, "soon"),
        ({"kind": "hl7-mllp", "host": "h", "port": 1, "priority_overrides": ["urgent=X"]}, "X"),
        (
            {
                "kind": "hl7-mllp",
                "host": "h",
                "port": 1,
                "message": "ORM^O01",
                "priority_overrides": ["urgent=C"],  # C is in 0485, not in 0027
            },
            "'C'",
        ),
        ({"kind": "ups-rs", "url": "http://x", "priority_overrides": ["routine=URGENT"]}, "URG"),
        ({"kind": "fhir-service-request", "url": "http://x", "priority_overrides": ["stat=S"]}, ""),
    ],
)
def test_priority_overrides_are_checked_against_the_peer_code_system(
    table: dict[str, object], error: str
) -> None:
    variable = {"HITL_GATEWAY_WORKLIST__DESTINATIONS": json.dumps([{"name": "a", **table}])}
    destinations = load_settings(environ=variable).worklist.destinations
    with pytest.raises(SettingsError, match=f"priority_overrides.*{error}"):
        build_updaters(WorklistSettings(destinations=destinations))


@pytest.mark.parametrize(
    ("message", "segment"), [("OMI^O23", "TQ1|||||||||A^ASAP"), ("ORM^O01", "|^^^^^A|")]
)
def test_a_destination_may_choose_its_own_code_for_a_priority(message: str, segment: str) -> None:
    variable = {
        "HITL_GATEWAY_WORKLIST__DESTINATIONS": json.dumps(
            [
                {
                    "name": "ris",
                    "host": "h",
                    "port": 1,
                    "message": message,
                    "priority_overrides": ["urgent=A"],
                }
            ]
        )
    }
    updater = build_updaters(load_settings(environ=variable).worklist)["ris"]
    assert isinstance(updater, MllpWorklistUpdater)
    change = PriorityChange("t:2", "1.2.3", "ACC", "PAT", Priority.URGENT, WHEN)
    rendered = updater.render(
        WorklistMessage(1, "t:2", "ris", PRIORITY_CHANGE_KIND, change.to_json())
    )
    assert segment in rendered
    stat = PriorityChange("t:3", "1.2.3", "ACC", "PAT", Priority.STAT, WHEN)
    assert "A^ASAP" not in updater.render(
        WorklistMessage(2, "t:3", "ris", PRIORITY_CHANGE_KIND, stat.to_json())
    )


def test_the_encounter_lookup_names_a_fhir_destination() -> None:
    ehr = '[{"name": "ehr", "kind": "fhir-service-request", "url": "http://127.0.0.1:9/fhir"}]'
    settings = load_settings(
        environ={
            "HITL_GATEWAY_WORKLIST__DESTINATIONS": ehr,
            "HITL_GATEWAY_WORKLIST__ENCOUNTER_LOOKUP": "ehr",
        }
    )
    assert isinstance(build_encounter_lookup(settings.worklist), FhirServiceRequestUpdater)
    assert build_encounter_lookup(WorklistSettings()) is None
    wrong = WorklistSettings(hl7_host="ris", hl7_port=1, encounter_lookup="hl7")
    with pytest.raises(SettingsError, match="names no fhir-service-request"):
        build_encounter_lookup(wrong)
