"""Settings: TOML file, environment overrides, refusal of unknown names, documentation in step."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from gateway.settings import SettingsError, configuration_table_markdown, load_settings

DOCS = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def test_defaults_match_the_external_contract() -> None:
    s = load_settings(environ={})
    assert (s.dicom.port, s.dicom.ae_title, s.http.port) == (11112, "HITLGW", 8080)
    assert s.storage.data_dir == Path("./var")
    assert s.database_url.startswith("sqlite:///")
    assert s.database_url.endswith("/var/gateway.db")
    assert s.assembly.stable_seconds == 10
    assert s.review.threshold == 0.8
    assert s.worklist.hl7_host == ""
    assert s.mlflow_tracking_uri.startswith("sqlite:///")


def test_environment_overrides_file(tmp_path: Path) -> None:
    cfg = tmp_path / "gw.toml"
    cfg.write_text('[dicom]\nport = 104\nae_title = "FILEAE"\n[assembly.per_modality]\nCR = 5\n')
    s = load_settings(
        cfg,
        environ={
            "HITL_GATEWAY_DICOM__PORT": "4242",
            "HITL_GATEWAY_REVIEW__THRESHOLD": "0.7",
            "HITL_GATEWAY_WORKLIST__HL7_HOST": "ris.local",
            "HITL_GATEWAY_WORKLIST__HL7_PORT": "2575",
            "HITL_GATEWAY_DATABASE__URL": "postgresql+psycopg://gw@db/gw",
            "HITL_GATEWAY_DICOM__ALLOWED_CALLING_AES": "PACS1, PACS2",
            "UNRELATED": "x",
        },
    )
    assert s.dicom.port == 4242
    assert s.dicom.ae_title == "FILEAE"
    assert s.review.threshold == 0.7
    assert (s.worklist.hl7_host, s.worklist.hl7_port) == ("ris.local", 2575)
    assert s.database_url == "postgresql+psycopg://gw@db/gw"
    assert s.dicom.allowed_calling_aes == ("PACS1", "PACS2")
    assert s.assembly.quiet_period("cr") == 5
    assert s.assembly.quiet_period("DX") == 10


@pytest.mark.parametrize(
    "environ",
    [
        {"HITL_GATEWAY_DICOM__PROT": "1"},
        {"HITL_GATEWAY_NOSUCH__KEY": "1"},
        {"HITL_GATEWAY_DICOM__PORT": "eleven"},
        {"HITL_GATEWAY_SCORING__WORKERS": "0"},
        {"HITL_GATEWAY_SCORING__WORKER_IDLE_SECONDS": "-1"},
    ],
)
def test_unknown_or_malformed_settings_are_refused(environ: dict[str, str]) -> None:
    with pytest.raises(SettingsError):
        load_settings(environ=environ)


def test_settings_are_immutable() -> None:
    s = load_settings(environ={})
    with pytest.raises(AttributeError):
        s.dicom.port = 1  # type: ignore[misc]


def test_configuration_reference_is_in_step_with_the_code() -> None:
    text = DOCS.read_text(encoding="utf-8")
    match = re.search(r"<!-- settings:begin -->\n(.*?)\n<!-- settings:end -->", text, re.S)
    assert match, "docs/configuration.md lacks the generated settings table"
    assert match.group(1) == configuration_table_markdown(), (
        "docs/configuration.md is out of date: run `python -m gateway.settings_doc`"
    )
