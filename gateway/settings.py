"""Typed, immutable settings from one TOML file and `HITL_GATEWAY_<SECTION>__<KEY>` variables.

Every field is documented where it is declared (meaning, unit, default); `docs/configuration.md`
lists the same names and a test keeps the two in step.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ENV_PREFIX = "HITL_GATEWAY_"


class SettingsError(ValueError):
    """A configuration value is missing, unknown or of the wrong type."""

    code = "invalid-settings"


def _doc(text: str) -> dict[str, str]:
    return {"doc": text}


@dataclass(frozen=True, slots=True)
class DicomSettings:
    """DIMSE listener."""

    port: int = field(default=11112, metadata=_doc("TCP port of the C-STORE/C-ECHO SCP."))
    ae_title: str = field(default="HITLGW", metadata=_doc("Called AE title of the SCP."))
    host: str = field(default="0.0.0.0", metadata=_doc("Address the SCP binds to."))  # noqa: S104
    allowed_calling_aes: tuple[str, ...] = field(
        default=(),
        metadata=_doc("Calling AE titles allowed to associate; empty allows any (site choice)."),
    )
    check_called_ae_title: bool = field(
        default=False,
        metadata=_doc(
            "Reject associations whose called AE title is not `ae_title` (a misrouted sender)."
        ),
    )
    max_pdu: int = field(
        default=131072, metadata=_doc("Maximum PDU length offered, in bytes (0 = unlimited).")
    )
    maximum_associations: int = field(
        default=32,
        metadata=_doc("Concurrent associations accepted; more are rejected (transient)."),
    )
    acse_timeout_seconds: float = field(
        default=10.0,
        metadata=_doc(
            "Seconds a connection may wait to request or release an association (ARTIM); "
            "an idle TCP connection holds an association slot until then."
        ),
    )
    idle_timeout_seconds: float = field(
        default=60.0,
        metadata=_doc(
            "Seconds an established association may stay silent before it is aborted (0 = never)."
        ),
    )
    tls_certificate: str = field(
        default="",
        metadata=_doc("PEM certificate of the SCP; set with tls_private_key for DICOM TLS."),
    )
    tls_private_key: str = field(
        default="", metadata=_doc("PEM private key of the SCP certificate; empty: no TLS.")
    )
    tls_ca_certificates: str = field(
        default="",
        metadata=_doc(
            "PEM bundle of CAs whose client certificates are required; empty: none asked."
        ),
    )


@dataclass(frozen=True, slots=True)
class HttpSettings:
    """HTTP listener (FHIR, DICOMweb, health, metrics)."""

    port: int = field(default=8080, metadata=_doc("TCP port of the HTTP listener."))
    host: str = field(default="0.0.0.0", metadata=_doc("Address the HTTP listener binds to."))  # noqa: S104
    base_url: str = field(
        default="",
        metadata=_doc(
            "Public base URL of the gateway, e.g. https://gw.example.org; the FHIR base is "
            "<base_url>/fhir and is the audience tokens must carry. Empty: http://localhost:<port>."
        ),
    )
    max_body_bytes: int = field(
        default=10 * 1024 * 1024, metadata=_doc("Largest accepted FHIR request body, in bytes.")
    )
    metrics_token_file: str = field(
        default="",
        metadata=_doc("File holding a static bearer token allowed to scrape /metrics."),
    )
    stow_max_instance_bytes: int = field(
        default=2 * 1024**3, metadata=_doc("Largest instance accepted by STOW-RS, in bytes (413).")
    )
    stow_max_request_bytes: int = field(
        default=20 * 1024**3, metadata=_doc("Largest STOW-RS request body, in bytes (413).")
    )

    def fhir_base(self) -> str:
        """The FHIR base URL, which is also the token audience."""
        base = self.base_url.rstrip("/") or f"http://localhost:{self.port}"
        return f"{base}/fhir"


@dataclass(frozen=True, slots=True)
class StorageSettings:
    """Local files: spool, keys, embedded stores."""

    data_dir: Path = field(
        default=Path("./var"), metadata=_doc("Directory for the spool, keys and embedded stores.")
    )
    spool_quota_bytes: int = field(
        default=0,
        metadata=_doc("Most bytes the spool may hold; past it A700 / 413 (0 = no quota)."),
    )
    orphan_grace_seconds: float = field(
        default=600.0,
        metadata=_doc("Age after which a spool file no instance row refers to is removed, in s."),
    )

    @property
    def spool_dir(self) -> Path:
        """Where received instances are written."""
        return self.data_dir / "spool"

    @property
    def keys_dir(self) -> Path:
        """Where the embedded issuer's and the audit signing keys live."""
        return self.data_dir / "keys"


@dataclass(frozen=True, slots=True)
class DatabaseSettings:
    """Relational store."""

    url: str = field(
        default="",
        metadata=_doc(
            "SQLAlchemy URL: sqlite:///... (embedded) or postgresql+psycopg://... (scale-out). "
            "Empty: sqlite:///<data_dir>/gateway.db."
        ),
    )


@dataclass(frozen=True, slots=True)
class AssemblySettings:
    """When a study is complete."""

    stable_seconds: float = field(
        default=10.0,
        metadata=_doc("Seconds of quiet after the last instance before a study is stable."),
    )
    per_modality: Mapping[str, float] = field(
        default_factory=lambda: types.MappingProxyType({"CT": 60.0, "MR": 60.0}),
        metadata=_doc(
            "Per-modality quiet periods in seconds, e.g. {CT = 60}; others use stable_seconds."
        ),
    )
    poll_seconds: float = field(
        default=0.5, metadata=_doc("How often due studies are looked for, in seconds.")
    )
    max_wait_seconds: float = field(
        default=1800.0,
        metadata=_doc(
            "Longest wait after the first instance before a study is stable anyway, in s."
        ),
    )
    max_claim_attempts: int = field(
        default=5,
        metadata=_doc("Scoring passes a study may fail before it is set aside as standard triage."),
    )

    def quiet_period(self, modality: str) -> float:
        """The quiet period for a modality, in seconds."""
        return float(self.per_modality.get(modality.upper(), self.stable_seconds))


@dataclass(frozen=True, slots=True)
class ReviewSettings:
    """Review thresholds and deadlines."""

    threshold: float = field(
        default=0.8, metadata=_doc("Score at or above which a review Task is created.")
    )
    secondary_threshold: float = field(
        default=0.95,
        metadata=_doc("Score at or above which a rejected flag goes to a secondary reviewer."),
    )
    sla_minutes: Mapping[str, float] = field(
        default_factory=lambda: types.MappingProxyType(
            {"stat": 15.0, "asap": 30.0, "urgent": 60.0, "routine": 480.0}
        ),
        metadata=_doc(
            "Review deadline (Task.restriction.period.end) per priority, in minutes after the "
            "Task is requested."
        ),
    )
    backup_pool: str = field(
        default="backup-reviewer",
        metadata=_doc("performerType code of the pool an overdue review Task is reassigned to."),
    )
    secondary_pool: str = field(
        default="secondary-reviewer",
        metadata=_doc("performerType code (and role) of the secondary-review pool."),
    )
    credentials_required: bool = field(
        default=True,
        metadata=_doc(
            "Reviewers need a current credential (`hitl-gateway reviewer credential`) to claim "
            "or decide; expired or unknown reviewers get 403."
        ),
    )
    sweep_seconds: float = field(
        default=30.0, metadata=_doc("How often overdue review Tasks are looked for, in seconds.")
    )
    notification_batch_seconds: float = field(
        default=5.0,
        metadata=_doc(
            "Subscription notifications: events of this window are sent in one Bundle (seconds)."
        ),
    )
    auto_escalate_threshold: float = field(
        default=0.99,
        metadata=_doc(
            "Score at or above which the auto-escalate switch acts; the switch is off unless a "
            "current safety-committee decision covers the use case."
        ),
    )


@dataclass(frozen=True, slots=True)
class WorklistDestination:
    """One worklist peer ([[worklist.destinations]]); see docs/worklist.md for each kind."""

    name: str = field(default="", metadata=_doc("Outbox destination name (unique)."))
    kind: str = field(
        default="hl7-mllp",
        metadata=_doc("hl7-mllp | ups-rs | fhir-service-request | webhook."),
    )
    host: str = field(default="", metadata=_doc("MLLP host (hl7-mllp)."))
    port: int = field(default=0, metadata=_doc("MLLP port (hl7-mllp)."))
    message: str = field(
        default="OMI^O23",
        metadata=_doc("HL7 message: OMI^O23 (v2.5.1, TQ1-9) or ORM^O01 (v2.3, ORC-7.6)."),
    )
    receiving_application: str = field(default="RIS", metadata=_doc("MSH-5 (hl7-mllp)."))
    receiving_facility: str = field(default="", metadata=_doc("MSH-6 (hl7-mllp)."))
    tls: bool = field(default=False, metadata=_doc("MLLP over TLS (hl7-mllp)."))
    tls_ca_file: str = field(default="", metadata=_doc("CA bundle that signs the peer."))
    tls_cert_file: str = field(default="", metadata=_doc("Client certificate (mutual TLS)."))
    tls_key_file: str = field(default="", metadata=_doc("Key of the client certificate."))
    url: str = field(
        default="",
        metadata=_doc("UPS-RS service root, FHIR base or webhook URL (HTTP kinds)."),
    )
    bearer_token_file: str = field(
        default="", metadata=_doc("File holding a bearer token sent as Authorization.")
    )
    secret_file: str = field(default="", metadata=_doc("File holding the webhook HMAC-SHA256 key."))
    accession_system: str = field(
        default="",
        metadata=_doc("ServiceRequest.identifier system of accession numbers (FHIR kind)."),
    )
    timeout_seconds: float = field(
        default=0.0, metadata=_doc("Per-request timeout; 0: worklist.ack_timeout_seconds.")
    )
    priority_overrides: tuple[str, ...] = field(
        default=(),
        metadata=_doc(
            "priority=code pairs replacing the mapping table for this peer, e.g. urgent=A "
            "(HL7 0485/0027 by message) or routine=LOW (UPS)."
        ),
    )


@dataclass(frozen=True, slots=True)
class WorklistSettings:
    """Worklist priority write-back."""

    hl7_host: str = field(default="", metadata=_doc("RIS MLLP host; empty: no HL7 delivery."))
    hl7_port: int = field(default=0, metadata=_doc("RIS MLLP port."))
    sending_application: str = field(default="HITLGW", metadata=_doc("MSH-3 of messages sent."))
    receiving_application: str = field(default="RIS", metadata=_doc("MSH-5 of messages sent."))
    ack_timeout_seconds: float = field(
        default=10.0, metadata=_doc("Seconds to wait for the connection and for the ACK.")
    )
    max_attempts: int = field(
        default=20, metadata=_doc("Delivery attempts before a message is dead-lettered.")
    )
    backoff_seconds: float = field(
        default=1.0, metadata=_doc("First retry delay in seconds; doubles per attempt.")
    )
    max_backoff_seconds: float = field(
        default=300.0, metadata=_doc("Upper bound of the retry delay in seconds.")
    )
    poll_seconds: float = field(
        default=0.5, metadata=_doc("How often the outbox is looked at, in seconds.")
    )
    max_in_flight: int = field(
        default=8, metadata=_doc("Deliveries in flight at once per destination (1: one by one).")
    )
    max_age_seconds: float = field(
        default=86400.0,
        metadata=_doc("Age in s after which an undelivered change is dead-lettered (0: none)."),
    )
    destinations: tuple[WorklistDestination, ...] = field(
        default=(),
        metadata=_doc(
            "Worklist peers, [[worklist.destinations]] tables (or a JSON list in the variable); "
            "hl7_host adds one named hl7."
        ),
    )
    alert_webhook_url: str = field(
        default="", metadata=_doc("URL that receives a signed JSON alert per dead letter.")
    )
    alert_secret_file: str = field(
        default="", metadata=_doc("File holding the HMAC-SHA256 key of dead-letter alerts.")
    )
    encounter_lookup: str = field(
        default="",
        metadata=_doc(
            "Name of a fhir-service-request destination whose EHR resolves the encounter of "
            "studies whose header lacks it (by accession); empty: no look-up."
        ),
    )

    def all_destinations(self) -> tuple[WorklistDestination, ...]:
        """The configured peers, with the legacy hl7_host/hl7_port one named hl7 first."""
        legacy: tuple[WorklistDestination, ...] = ()
        if self.hl7_host:
            legacy = (
                WorklistDestination(
                    name="hl7",
                    host=self.hl7_host,
                    port=self.hl7_port,
                    receiving_application=self.receiving_application,
                ),
            )
        return legacy + self.destinations


@dataclass(frozen=True, slots=True)
class MlflowSettings:
    """Model registry."""

    tracking_uri: str = field(
        default="",
        metadata=_doc(
            "MLflow tracking/registry URI; empty: the embedded SQLite store "
            "sqlite:///<data_dir>/mlflow/mlflow.db."
        ),
    )
    model_name: str = field(
        default="cxr-pneumothorax",
        metadata=_doc("Registered model served for chest X-ray triage (alias 'production')."),
    )
    alias: str = field(default="production", metadata=_doc("Registry alias that is served."))
    ct_model_name: str = field(
        default="ct-haemorrhage",
        metadata=_doc("Registered model served for non-contrast head CT haemorrhage triage."),
    )
    poll_seconds: float = field(
        default=30.0,
        metadata=_doc("How often the served alias is re-resolved (promotion without restart), s."),
    )


@dataclass(frozen=True, slots=True)
class ScoringSettings:
    """Inference."""

    timeout_seconds: float = field(
        default=30.0,
        metadata=_doc("Per-study scoring timeout; past it the study gets standard triage."),
    )
    workers: int = field(
        default=1,
        metadata=_doc(
            "Inference workers per use case: child processes with process isolation, else threads."
        ),
    )
    worker_idle_seconds: float = field(
        default=600.0,
        metadata=_doc(
            "An inference child process idle this long is stopped and started again by the next "
            "study (which waits for its start); 0: children start with the gateway and stay."
        ),
    )
    process_isolation: bool = field(
        default=True,
        metadata=_doc(
            "Run inference in child processes that are killed at the timeout (a hung model "
            "cannot wedge a worker); off: threads in the gateway process."
        ),
    )
    drift_psi_level: float = field(
        default=0.2,
        metadata=_doc("Population stability index at which a served version is flagged."),
    )
    drift_window: int = field(
        default=500, metadata=_doc("Recent studies per model version compared for drift.")
    )
    drift_min_samples: int = field(
        default=300,
        metadata=_doc("Studies needed before drift is computed (fewer: PSI is mostly noise)."),
    )

    def __post_init__(self) -> None:
        """Refuse a worker count below one and a negative idle time."""
        if self.workers < 1:
            raise SettingsError("scoring.workers must be at least 1")
        if self.worker_idle_seconds < 0:
            raise SettingsError("scoring.worker_idle_seconds must be 0 (never stop) or positive")


@dataclass(frozen=True, slots=True)
class AuthSettings:
    """Bearer token validation."""

    issuer: str = field(
        default="",
        metadata=_doc(
            "Expected token issuer; empty: the embedded development issuer <fhir base>/auth."
        ),
    )
    jwks_path: str = field(
        default="",
        metadata=_doc(
            "JWKS file of the issuer; empty: the embedded issuer's key under data_dir/keys."
        ),
    )
    jwks_uri: str = field(
        default="",
        metadata=_doc(
            "URL of the issuer's JWKS (the hospital's authorization server); fetched and cached."
        ),
    )
    backend_clients_path: str = field(
        default="",
        metadata=_doc(
            "JSON file of SMART Backend Services clients of the embedded issuer: "
            '{"<client_id>": {"jwks": {...}, "scope": "system/...", "roles": ["pacs"]}}.'
        ),
    )
    leeway_seconds: int = field(default=30, metadata=_doc("Clock leeway for exp/nbf, in seconds."))
    jwks_cache_seconds: int = field(
        default=300,
        metadata=_doc(
            "How long a fetched JWKS is trusted before it is read again; an unknown `kid` "
            "triggers an early re-read (key rotation)."
        ),
    )
    token_lifetime_seconds: int = field(
        default=3600,
        metadata=_doc("Lifetime of development tokens minted by `hitl-gateway token`."),
    )


MIN_RETENTION_YEARS = 6  # HIPAA 45 CFR 164.316(b)(2) documentation retention


@dataclass(frozen=True, slots=True)
class AuditSettings:
    """Audit trail: signed checkpoints and retention."""

    retention_years: int = field(
        default=6,
        metadata=_doc("Years audit records are kept before a purge may remove them (at least 6)."),
    )
    checkpoint_every_records: int = field(
        default=1000, metadata=_doc("Sign a checkpoint after this many new audit records.")
    )
    checkpoint_every_seconds: float = field(
        default=300.0,
        metadata=_doc("Sign a checkpoint at least this often (seconds) while records arrive."),
    )
    keys_dir: str = field(
        default="",
        metadata=_doc("Directory of the Ed25519 audit signing keys; empty: <data_dir>/keys/audit."),
    )

    def __post_init__(self) -> None:
        """Refuse a retention below the legal minimum and meaningless checkpoint intervals."""
        if self.retention_years < MIN_RETENTION_YEARS:
            raise SettingsError(
                f"audit.retention_years {self.retention_years} is below the minimum of "
                f"{MIN_RETENTION_YEARS} years"
            )
        if self.checkpoint_every_records < 1 or self.checkpoint_every_seconds <= 0:
            raise SettingsError("audit checkpoint intervals must be positive")


@dataclass(frozen=True, slots=True)
class Settings:
    """All settings of one gateway process."""

    dicom: DicomSettings = field(default_factory=DicomSettings)
    http: HttpSettings = field(default_factory=HttpSettings)
    storage: StorageSettings = field(default_factory=StorageSettings)
    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    assembly: AssemblySettings = field(default_factory=AssemblySettings)
    review: ReviewSettings = field(default_factory=ReviewSettings)
    worklist: WorklistSettings = field(default_factory=WorklistSettings)
    mlflow: MlflowSettings = field(default_factory=MlflowSettings)
    scoring: ScoringSettings = field(default_factory=ScoringSettings)
    auth: AuthSettings = field(default_factory=AuthSettings)
    audit: AuditSettings = field(default_factory=AuditSettings)

    @property
    def database_url(self) -> str:
        """The effective SQLAlchemy URL."""
        return self.database.url or f"sqlite:///{self.storage.data_dir.resolve()}/gateway.db"

    @property
    def mlflow_tracking_uri(self) -> str:
        """The effective MLflow tracking URI."""
        if self.mlflow.tracking_uri:
            return self.mlflow.tracking_uri
        return f"sqlite:///{(self.storage.data_dir / 'mlflow').resolve()}/mlflow.db"

    @property
    def auth_issuer(self) -> str:
        """The effective token issuer."""
        return self.auth.issuer or f"{self.http.fhir_base()}/auth"


def _convert(value: Any, hint: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    try:
        if hint is bool:
            if isinstance(value, str):
                if value.lower() in {"1", "true", "yes", "on"}:
                    return True
                if value.lower() in {"0", "false", "no", "off"}:
                    return False
                raise ValueError(value)
            return bool(value)
        if hint in (int, float, str):
            return hint(value)
        if hint is Path:
            return Path(value)
        if origin is tuple and dataclasses.is_dataclass(typing.get_args(hint)[0]):
            tables = json.loads(value) if isinstance(value, str) else list(value)
            item_cls = typing.get_args(hint)[0]
            return tuple(_section(item_cls, dict(t), f"{where}[{n}]") for n, t in enumerate(tables))
        if origin is tuple:
            items = value.split(",") if isinstance(value, str) else list(value)
            return tuple(str(i).strip() for i in items if str(i).strip())
        if origin is Mapping or hint is Mapping:
            if isinstance(value, str):
                pairs = (p.split("=", 1) for p in value.split(",") if p.strip())
                value = {k.strip(): v.strip() for k, v in pairs}
            return types.MappingProxyType({str(k).upper(): float(v) for k, v in value.items()})
    except (TypeError, ValueError, AttributeError) as exc:
        raise SettingsError(f"{where}: cannot read {value!r} as {hint}") from exc
    raise SettingsError(f"{where}: unsupported setting type {hint}")


def _section(cls: type[Any], values: Mapping[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - known
    if unknown:
        raise SettingsError(f"{where}: unknown setting(s) {sorted(unknown)}")
    kwargs = {k: _convert(v, hints[k], f"{where}.{k}") for k, v in values.items()}
    return cls(**kwargs)


def load_settings(
    config_file: Path | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Read the TOML file (if any); `HITL_GATEWAY_<SECTION>__<KEY>` variables override it."""
    env = os.environ if environ is None else environ
    raw: dict[str, dict[str, Any]] = {}
    if config_file is not None:
        with config_file.open("rb") as fh:
            data = tomllib.load(fh)
        for section, values in data.items():
            if not isinstance(values, dict):
                raise SettingsError(f"{config_file}: [{section}] must be a table")
            raw[section] = dict(values)
    for key, value in env.items():
        if not key.startswith(ENV_PREFIX) or "__" not in key:
            continue
        section, _, name = key[len(ENV_PREFIX) :].partition("__")
        raw.setdefault(section.lower(), {})[name.lower()] = value
    hints = typing.get_type_hints(Settings)
    sections = {f.name for f in dataclasses.fields(Settings)}
    unknown = set(raw) - sections
    if unknown:
        raise SettingsError(f"unknown settings section(s) {sorted(unknown)}")
    return Settings(**{name: _section(hints[name], vals, name) for name, vals in raw.items()})


def _format_default(value: Any) -> str:
    if isinstance(value, Mapping):
        return ", ".join(f"{k}={v:g}" for k, v in value.items())
    if isinstance(value, tuple):
        return ",".join(value) or "(empty)"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value) if value != "" else "(empty)"


def describe_settings() -> list[tuple[str, str, str, str]]:
    """(environment variable, type, default, meaning) for every setting, for the documentation."""
    rows: list[tuple[str, str, str, str]] = []
    hints = typing.get_type_hints(Settings)
    for section in dataclasses.fields(Settings):
        cls = hints[section.name]
        sub_hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            default: Any = f.default
            if default is dataclasses.MISSING and callable(f.default_factory):
                default = f.default_factory()
            hint = sub_hints[f.name]
            type_name = {"tuple": "list", "Mapping": "table", "Path": "path"}.get(
                getattr(hint, "__name__", str(hint)), getattr(hint, "__name__", str(hint))
            )
            rows.append(
                (
                    f"{ENV_PREFIX}{section.name.upper()}__{f.name.upper()}",
                    type_name,
                    _format_default(default),
                    f.metadata.get("doc", ""),
                )
            )
    return rows


def configuration_table_markdown() -> str:
    """The settings reference table as it stands in docs/configuration.md."""
    lines = ["| variable | type | default | meaning |", "|---|---|---|---|"]
    for env, type_name, default, doc in describe_settings():
        lines.append(f"| `{env}` | {type_name} | `{default}` | {doc} |")
    return "\n".join(lines)
