"""MLflow model registry access: register ONNX versions, move aliases, resolve the served version.

The gateway serves only a registered version reached through an alias, and only when the model
file's SHA-256 equals the `onnx_sha256` tag recorded at registration. MLflow is imported lazily;
its telemetry is switched off by `scoring/__init__.py` before any import. The embedded store is a
local SQLite database with artifacts in a directory beside it, so nothing leaves the machine.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse
from urllib.request import url2pathname

from gateway.domain.errors import InvalidInput, ModelUnavailable
from gateway.domain.model import ModelIdentity
from scoring.contract import CONTRACT_ARTIFACT, CONTRACT_TAG, InputContract

SHA256_TAG = "onnx_sha256"
MODEL_ARTIFACT_DIR = "model"
MODEL_FILE = "model.onnx"
MODEL_CARD_FILE = "model_card.md"
EXPERIMENT_NAME = "hitl-gateway-model-registrations"
_SHA256 = re.compile(r"[0-9a-f]{64}")
RESERVED_FILES = frozenset({MODEL_FILE, CONTRACT_ARTIFACT})


@dataclass(frozen=True, slots=True)
class VersionInfo:
    """One registered version as listed: number, tags, aliases and creation time (ms)."""

    name: str
    version: str
    tags: Mapping[str, str]
    aliases: tuple[str, ...]
    created_ms: int
    run_id: str


@dataclass(frozen=True, slots=True)
class ResolvedModel:
    """A registered version behind an alias: verified local ONNX file and input contract."""

    name: str
    version: str
    sha256: str
    local_path: Path
    contract: InputContract
    reference_json: str = ""  # the version's validation reference for drift monitoring

    def identity(self) -> ModelIdentity:
        """The identity recorded with every score."""
        return ModelIdentity(self.name, self.version, self.sha256, use_case=self.contract.use_case)


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _sqlite_path(tracking_uri: str) -> Path | None:
    if not tracking_uri.startswith("sqlite:///"):
        return None
    return Path(tracking_uri[len("sqlite:///") :].split("?", 1)[0])


def _local_dir(uri: str) -> Path | None:
    """The local directory of a file artifact URI, or None for remote ones."""
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return Path(url2pathname(parsed.path))
    if parsed.scheme == "" or (len(parsed.scheme) == 1 and uri[1:3] in (":\\", ":/")):
        return Path(uri)
    return None


class ModelRegistry:
    """Registry operations on one MLflow tracking/registry URI (never a network default)."""

    def __init__(
        self,
        tracking_uri: str,
        *,
        artifact_root: Path | None = None,
        cache_dir: Path | None = None,
    ) -> None:
        if not tracking_uri:
            raise InvalidInput("an MLflow tracking URI is required")
        self.tracking_uri = tracking_uri
        db_path = _sqlite_path(tracking_uri)
        if artifact_root is None and db_path is not None:
            artifact_root = db_path.parent / "artifacts"
        self._db_path = db_path
        self._artifact_root = artifact_root
        self._cache_dir = cache_dir or Path(tempfile.gettempdir()) / "hitl-gateway-models"
        self._client: Any = None
        self._lock = threading.Lock()

    def client(self) -> Any:
        """The MlflowClient (created on first use; creating an embedded store runs migrations)."""
        with self._lock:
            if self._client is None:
                from mlflow.tracking import MlflowClient

                if self._db_path is not None:
                    # SQLite creates the database file but not its directory.
                    self._db_path.parent.mkdir(parents=True, exist_ok=True)
                self._client = MlflowClient(
                    tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri
                )
            return self._client

    def _experiment_id(self) -> str:
        from mlflow.exceptions import MlflowException

        client = self.client()
        experiment = client.get_experiment_by_name(EXPERIMENT_NAME)
        if experiment is not None:
            return str(experiment.experiment_id)
        location = None
        if self._artifact_root is not None:
            self._artifact_root.mkdir(parents=True, exist_ok=True)
            location = self._artifact_root.resolve().as_uri()
        try:
            return str(client.create_experiment(EXPERIMENT_NAME, artifact_location=location))
        except MlflowException:
            # Another process created it between our look-up and create.
            experiment = client.get_experiment_by_name(EXPERIMENT_NAME)
            if experiment is None:
                raise
            return str(experiment.experiment_id)

    def register_onnx(
        self,
        name: str,
        onnx_path: Path,
        contract: InputContract,
        metrics: Mapping[str, float],
        model_card_text: str,
        tags: Mapping[str, str] | None = None,
        artifacts: Mapping[str, str] | None = None,
    ) -> str:
        """Log a run (metrics, model.onnx, model card, contract, evaluation documents) and
        register it as a version; `artifacts` maps file names to their text."""
        from mlflow.entities import Metric
        from mlflow.exceptions import MlflowException

        data = Path(onnx_path).read_bytes()
        sha = hashlib.sha256(data).hexdigest()
        client = self.client()
        run = client.create_run(
            self._experiment_id(),
            run_name=f"{name}-{sha[:12]}",
            tags={"model_name": name, SHA256_TAG: sha},
        )
        run_id = run.info.run_id
        try:
            now = int(time.time() * 1000)
            client.log_batch(
                run_id, metrics=[Metric(k, float(v), now, 0) for k, v in sorted(metrics.items())]
            )
            with tempfile.TemporaryDirectory() as tmp:
                staging = Path(tmp)
                (staging / MODEL_FILE).write_bytes(data)
                (staging / MODEL_CARD_FILE).write_text(model_card_text, encoding="utf-8")
                (staging / CONTRACT_ARTIFACT).write_text(contract.to_json(), encoding="utf-8")
                for file_name, text in (artifacts or {}).items():
                    if Path(file_name).name != file_name or file_name in RESERVED_FILES:
                        raise InvalidInput(f"artifact name {file_name!r} is not allowed")
                    (staging / file_name).write_text(text, encoding="utf-8")
                client.log_artifacts(run_id, str(staging), MODEL_ARTIFACT_DIR)
        except BaseException:
            client.set_terminated(run_id, "FAILED")
            raise
        client.set_terminated(run_id, "FINISHED")
        try:
            client.create_registered_model(name)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        version_tags = {**(tags or {}), SHA256_TAG: sha, CONTRACT_TAG: contract.to_json()}
        version = client.create_model_version(
            name,
            source=f"{run.info.artifact_uri}/{MODEL_ARTIFACT_DIR}",
            run_id=run_id,
            tags=version_tags,
        )
        return str(version.version)

    def find_version(self, name: str, sha256: str) -> str | None:
        """The lowest version of `name` registered with this ONNX SHA-256, if any."""
        from mlflow.exceptions import MlflowException

        try:
            versions = self.client().search_model_versions(f"name = '{name}'")
        except MlflowException:
            return None
        found = [int(v.version) for v in versions if v.tags.get(SHA256_TAG) == sha256]
        return str(min(found)) if found else None

    def version_tags(self, name: str, version: str) -> dict[str, str]:
        """All tags of one model version."""
        return dict(self.client().get_model_version(name, version).tags)

    def set_version_tags(self, name: str, version: str, tags: Mapping[str, str]) -> None:
        """Set tags on one model version (existing keys are overwritten)."""
        client = self.client()
        for key, value in tags.items():
            client.set_model_version_tag(name, version, key, value)

    def versions(self, name: str) -> list[VersionInfo]:
        """Every version of a registered model, oldest first (empty if the model is unknown)."""
        from mlflow.exceptions import MlflowException

        try:
            found = self.client().search_model_versions(f"name = '{name}'")
        except MlflowException:
            return []
        infos = [
            VersionInfo(
                name,
                str(v.version),
                dict(v.tags),
                tuple(getattr(v, "aliases", ()) or ()),
                int(v.creation_timestamp or 0),
                str(v.run_id or ""),
            )
            for v in found
        ]
        return sorted(infos, key=lambda v: int(v.version))

    def version(self, name: str, version: str) -> VersionInfo:
        """One version; InvalidInput when it does not exist."""
        from mlflow.exceptions import MlflowException

        try:
            v = self.client().get_model_version(name, version)
        except MlflowException as exc:
            raise InvalidInput(f"{name!r} has no version {version!r}") from exc
        return VersionInfo(
            name,
            str(v.version),
            dict(v.tags),
            tuple(getattr(v, "aliases", ()) or ()),
            int(v.creation_timestamp or 0),
            str(v.run_id or ""),
        )

    def alias_version(self, name: str, alias: str) -> str | None:
        """The version number behind an alias, or None."""
        from mlflow.exceptions import MlflowException

        try:
            return str(self.client().get_model_version_by_alias(name, alias).version)
        except MlflowException:
            return None

    def artifact_names(self, name: str, version: str) -> frozenset[str]:
        """File names logged beside the version's model file (works on remote stores too)."""
        run_id = self.version(name, version).run_id
        if not run_id:
            return frozenset()
        listed = self.client().list_artifacts(run_id, MODEL_ARTIFACT_DIR)
        return frozenset(Path(str(f.path)).name for f in listed if not f.is_dir)

    def artifact_text(self, name: str, version: str, file_name: str) -> str | None:
        """The text of one artifact of a version, or None when it was not logged."""
        mv = self.client().get_model_version(name, version)
        path = self._locate(str(mv.source), name, version) / file_name
        return path.read_text(encoding="utf-8") if path.is_file() else None

    def set_alias(self, name: str, alias: str, version: str) -> None:
        """Point `alias` of the registered model at `version`."""
        self.client().set_registered_model_alias(name, alias, version)

    def metrics(self, name: str, version: str) -> dict[str, float]:
        """The metrics logged with the run behind a version."""
        client = self.client()
        run_id = client.get_model_version(name, version).run_id
        return dict(client.get_run(run_id).data.metrics) if run_id else {}

    def resolve(self, name: str, alias: str = "production") -> ResolvedModel:
        """The version behind `alias`, with its local file verified against `onnx_sha256`.

        Raises ModelUnavailable when the alias or model is missing, the version has no valid hash
        tag or contract, the file cannot be found, or its SHA-256 differs from the registered one.
        """
        from mlflow.exceptions import MlflowException

        try:
            mv = self.client().get_model_version_by_alias(name, alias)
        except MlflowException as exc:
            raise ModelUnavailable(
                f"registered model {name!r} has no version under alias {alias!r}: {exc.message}"
            ) from exc
        return self._verified(mv, f"{name!r} version {mv.version} (alias {alias!r})")

    def verify(self, name: str, version: str) -> ResolvedModel:
        """One version by number, verified exactly as `resolve` verifies the served one."""
        from mlflow.exceptions import MlflowException

        try:
            mv = self.client().get_model_version(name, version)
        except MlflowException as exc:
            raise ModelUnavailable(f"{name!r} has no version {version!r}") from exc
        return self._verified(mv, f"{name!r} version {version}")

    def _verified(self, mv: Any, where: str) -> ResolvedModel:
        name, version = str(mv.name), str(mv.version)
        if str(mv.status) != "READY":
            raise ModelUnavailable(f"{where} is not ready (status {mv.status})")
        expected = str(mv.tags.get(SHA256_TAG, "")).lower()
        if not _SHA256.fullmatch(expected):
            raise ModelUnavailable(f"{where} has no registered {SHA256_TAG} tag; refusing it")
        local_dir = self._locate(str(mv.source), name, version)
        model_file = local_dir / MODEL_FILE
        if not model_file.is_file():
            raise ModelUnavailable(f"{where}: model file {model_file} is missing")
        try:
            actual = file_sha256(model_file)
        except OSError as exc:
            raise ModelUnavailable(f"{where}: cannot read {model_file}: {exc}") from exc
        if actual != expected:
            raise ModelUnavailable(
                f"{where}: SHA-256 of {model_file} is {actual}, registered {expected}; "
                "the file was changed after registration, refusing it"
            )
        return ResolvedModel(
            name,
            version,
            expected,
            model_file,
            self._contract(mv, local_dir),
            str(mv.tags.get("validation_reference", "")),
        )

    def _locate(self, source: str, name: str, version: str) -> Path:
        """The version's artifact directory on this machine, downloading remote artifacts."""
        local = _local_dir(source)
        if local is not None:
            return local
        from mlflow.artifacts import download_artifacts
        from mlflow.exceptions import MlflowException

        target = self._cache_dir / name / version
        if target.exists():
            # A previous download may be stale or tampered with; the hash check decides anyway.
            shutil.rmtree(target)
        target.mkdir(parents=True)
        try:
            path = download_artifacts(
                artifact_uri=source, dst_path=str(target), tracking_uri=self.tracking_uri
            )
        except (MlflowException, OSError) as exc:
            raise ModelUnavailable(f"cannot download {source}: {exc}") from exc
        return Path(path)

    @staticmethod
    def _contract(mv: Any, local_dir: Path) -> InputContract:
        text = mv.tags.get(CONTRACT_TAG)
        if text is None and (local_dir / CONTRACT_ARTIFACT).is_file():
            text = (local_dir / CONTRACT_ARTIFACT).read_text(encoding="utf-8")
        if text is None:
            raise ModelUnavailable(f"{mv.name!r} version {mv.version} has no input contract")
        try:
            return InputContract.from_json(str(text))
        except InvalidInput as exc:
            raise ModelUnavailable(f"{mv.name!r} version {mv.version}: {exc.message}") from exc
