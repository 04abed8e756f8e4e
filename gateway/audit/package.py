"""`hitl-gateway audit export`: an audit package for a period, signed, checkable offline.

A package is a directory:

- `AuditEvent.ndjson`, `Provenance.ndjson`: the records recorded in [from, to) (optionally of
  one patient), one stored resource per line, exactly as hashed unless PHI is masked;
- `chain.ndjson`: `seq`, `prevHash` and `hash` of each exported record, so an auditor can
  recompute every record's hash (`sha256(prevHash + line)`) when the package is not masked;
- `Task.ndjson`: every stored version (full history) of each Task the records name;
- `models.json`: each model version involved, its model card and registry facts when the
  registry is reachable, and the governance records (registration, approvals, gate results,
  promotions, rollbacks) the trail holds for it;
- `verification.json`: the chain verification over the exported records, anchored on signed
  checkpoints; `compliance.json`: the compliance summary (`gateway.audit.compliance`);
- `manifest.json` (file names, SHA-256, sizes, line counts, period, chain head, the latest signed
  checkpoint) and `manifest.jws`, its Ed25519 compact JWS; `public.jwks.json` as a convenience
  (an auditor checks with a key obtained separately: `audit verify-package --public-key`).

Masking replaces patient and encounter ids with keyed pseudonyms (one random key per package, not
kept) and drops `display` of patient references, so records stay linkable inside the package only.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Protocol

from sqlalchemy import Engine, select

from fhir_mapping.audit_event import details_of
from fhir_mapping.canonical import canonical_json
from gateway.audit.activity import activity_event
from gateway.audit.checkpoint import latest
from gateway.audit.compliance import ComplianceTally
from gateway.audit.signing import AuditKeyring
from gateway.audit.trail import append, index_param
from gateway.audit.verify import verify_chain
from gateway.domain.errors import InvalidInput
from gateway.domain.model import Actor
from gateway.persistence.tables import audit_index, audit_log, task_history

MANIFEST = "manifest.json"
MANIFEST_JWS = "manifest.jws"
PUBLIC_JWKS = "public.jwks.json"
PACKAGE_TYPE = "hitl-gateway-audit-package"
_MASKED_REFERENCE = re.compile(r"\b(Patient|Encounter)/([A-Za-z0-9\-.]{1,64})")


class ModelCardSource(Protocol):
    """Where model cards and registry facts come from (the MLflow registry in production)."""

    def describe(self, name: str, version: str) -> dict[str, Any]:
        """Model card text, tags and metrics of one version; raises when unavailable."""
        ...


@dataclass(frozen=True, slots=True)
class ExportRequest:
    """What to export."""

    start: datetime
    end: datetime
    patient: str | None = None
    mask_phi: bool = False
    batch_size: int = 2000


@dataclass(slots=True)
class _Collected:
    tasks: set[str] = field(default_factory=set)
    models: dict[tuple[str, str], str] = field(default_factory=dict)
    first_seq: int | None = None
    last_seq: int | None = None
    tally: ComplianceTally = field(default_factory=ComplianceTally)


class PhiMasker:
    """Keyed pseudonyms for patient and encounter ids (one random key per export, not kept)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._key = secrets.token_bytes(32)

    def pseudonym(self, value: str) -> str:
        """The pseudonym of one id."""
        return "masked-" + hmac.new(self._key, value.encode(), hashlib.sha256).hexdigest()[:16]

    def text(self, text: str) -> str:
        """Masked canonical JSON of a stored resource (unchanged when masking is off)."""
        if not self.enabled:
            return text
        document = json.loads(text)
        return canonical_json(self.resource(document))

    def resource(self, node: Any) -> Any:
        """The masked copy of a resource (or any JSON value)."""
        if isinstance(node, dict):
            reference = node.get("reference")
            masked = {k: self.resource(v) for k, v in node.items()}
            if isinstance(reference, str) and reference.startswith("Patient/"):
                masked.pop("display", None)
            return masked
        if isinstance(node, list):
            return [self.resource(v) for v in node]
        if isinstance(node, str):
            return _MASKED_REFERENCE.sub(lambda m: f"{m[1]}/{self.pseudonym(m[2])}", node)
        return node


class _Output:
    """One NDJSON (or JSON) file of the package, hashed as it is written."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.digest = hashlib.sha256()
        self.lines = 0
        self.size = 0
        self._fh: IO[bytes] = path.open("wb")

    def line(self, text: str) -> None:
        data = (text + "\n").encode("utf-8")
        self._fh.write(data)
        self.digest.update(data)
        self.size += len(data)
        self.lines += data.count(b"\n")

    def close(self) -> dict[str, Any]:
        self._fh.close()
        return {
            "name": self.path.name,
            "sha256": self.digest.hexdigest(),
            "bytes": self.size,
            "lines": self.lines,
        }


def export_package(
    engine: Engine,
    keyring: AuditKeyring,
    out: Path,
    request: ExportRequest,
    *,
    actor: Actor,
    model_cards: ModelCardSource | None = None,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> dict[str, Any]:
    """Write the package into the empty (or new) directory `out`; return its manifest."""
    if request.end <= request.start:
        raise InvalidInput("--to must be after --from", code="value")
    if out.exists() and any(out.iterdir()):
        raise InvalidInput(f"{out} is not empty", code="value")
    out.mkdir(parents=True, exist_ok=True)
    masker = PhiMasker(request.mask_phi)
    collected = _Collected()
    files = [
        *_write_records(engine, out, request, masker, collected),
        *_write_tasks(engine, out, collected.tasks, masker),
    ]
    files.append(_write_json(out / "models.json", _models(engine, collected, model_cards, masker)))
    segment = None
    if collected.first_seq is not None and collected.last_seq is not None:
        segment = (collected.first_seq, collected.last_seq)
    report = verify_chain(engine, public_keys=keyring.public_jwks(), segment=segment)
    files.append(_write_json(out / "verification.json", report.as_dict()))
    files.append(_write_json(out / "compliance.json", collected.tally.summary()))
    with engine.connect() as conn:
        checkpoint = latest(conn)
    key = keyring.active()
    manifest = {
        "type": PACKAGE_TYPE,
        "formatVersion": 1,
        "createdAt": clock().astimezone(UTC).isoformat(),
        "period": {"from": request.start.isoformat(), "to": request.end.isoformat()},
        "patient": masker.pseudonym(request.patient)
        if request.patient and request.mask_phi
        else request.patient,
        "maskPhi": request.mask_phi,
        "records": {"firstSeq": collected.first_seq, "lastSeq": collected.last_seq},
        "chain": {"headSeq": report.head_seq, "headHash": report.head_hash, "ok": report.ok},
        "checkpoint": None
        if checkpoint is None
        else {
            "number": checkpoint.number,
            "seq": checkpoint.seq,
            "hash": checkpoint.hash,
            "jws": checkpoint.jws,
        },
        "keyId": key.key_id,
        "files": sorted(files, key=lambda f: str(f["name"])),
    }
    (out / MANIFEST).write_text(canonical_json(manifest), encoding="utf-8")
    (out / MANIFEST_JWS).write_text(key.sign_jws(manifest), encoding="ascii")
    (out / PUBLIC_JWKS).write_text(json.dumps(keyring.public_jwks(), indent=2), encoding="utf-8")
    _audit_export(engine, actor, request, manifest, clock())
    return manifest


def _write_records(
    engine: Engine, out: Path, request: ExportRequest, masker: PhiMasker, collected: _Collected
) -> list[dict[str, Any]]:
    outputs = {t: _Output(out / f"{t}.ndjson") for t in ("AuditEvent", "Provenance")}
    chain = _Output(out / "chain.ndjson")
    query = select(
        audit_log.c.seq,
        audit_log.c.resource_type,
        audit_log.c.resource,
        audit_log.c.prev_hash,
        audit_log.c.hash,
    ).where(
        # Naming both types lets the (resource_type, recorded) index serve the period.
        audit_log.c.resource_type.in_(("AuditEvent", "Provenance")),
        audit_log.c.recorded >= request.start,
        audit_log.c.recorded < request.end,
    )
    if request.patient:
        query = query.where(audit_log.c.patient_id == request.patient)
    with engine.connect() as conn:
        rows = conn.execution_options(yield_per=request.batch_size).execute(
            query.order_by(audit_log.c.seq)
        )
        for row in rows:
            seq = int(row.seq)
            collected.first_seq = seq if collected.first_seq is None else collected.first_seq
            collected.last_seq = seq
            document = json.loads(row.resource)
            _note(document, collected)
            outputs[row.resource_type].line(masker.text(row.resource))
            chain.line(
                canonical_json(
                    {
                        "seq": seq,
                        "resourceType": row.resource_type,
                        "prevHash": row.prev_hash,
                        "hash": row.hash,
                    }
                )
            )
    return [o.close() for o in (*outputs.values(), chain)]


def _note(document: Mapping[str, Any], collected: _Collected) -> None:
    references = [
        str(e.get("what", {}).get("reference", "")) for e in document.get("entity", ())
    ] + [str(t.get("reference", "")) for t in document.get("target", ())]
    collected.tasks.update(r.split("/")[1] for r in references if r.startswith("Task/"))
    if document.get("resourceType") == "AuditEvent":
        collected.tally.add(document)
        details = details_of(document)
        if details.get("model-name") and details.get("model-version"):
            key = (details["model-name"], details["model-version"])
            collected.models.setdefault(key, details.get("model-sha256", ""))


def _write_tasks(
    engine: Engine, out: Path, task_ids: set[str], masker: PhiMasker
) -> list[dict[str, Any]]:
    output = _Output(out / "Task.ndjson")
    ordered = sorted(task_ids)
    with engine.connect() as conn:
        for i in range(0, len(ordered), 500):
            rows = conn.execute(
                select(task_history.c.resource)
                .where(task_history.c.task_id.in_(ordered[i : i + 500]))
                .order_by(task_history.c.task_id, task_history.c.version_id)
            )
            for row in rows:
                output.line(masker.text(row.resource))
    return [output.close()]


def _models(
    engine: Engine,
    collected: _Collected,
    source: ModelCardSource | None,
    masker: PhiMasker,
) -> list[dict[str, Any]]:
    models = []
    for (name, version), sha256 in sorted(collected.models.items()):
        entry: dict[str, Any] = {"name": name, "version": version, "sha256": sha256}
        if source is None:
            entry["registry"] = {"available": False, "reason": "no model registry configured"}
        else:
            try:
                entry["registry"] = {"available": True, **source.describe(name, version)}
            except Exception as exc:  # the package still records what the trail knows
                entry["registry"] = {"available": False, "reason": f"{type(exc).__name__}: {exc}"}
        with engine.connect() as conn:
            texts = conn.execute(
                select(audit_log.c.resource)
                .join(audit_index, audit_index.c.seq == audit_log.c.seq)
                .where(
                    audit_index.c.param == index_param("AuditEvent", "model"),
                    audit_index.c.value == f"{name}:{version}",
                )
                .order_by(audit_log.c.seq)
            ).scalars()
            governance = []
            for text in texts:
                document = json.loads(text)
                details = details_of(document)
                if details.get("pipeline-event", "").startswith("model-"):
                    governance.append(
                        {
                            "recorded": document["recorded"],
                            "outcome": document.get("outcome"),
                            "outcomeDesc": document.get("outcomeDesc", ""),
                            "agent": [a.get("who", {}).get("reference") for a in document["agent"]],
                            "details": json.loads(masker.text(json.dumps(details))),
                        }
                    )
        entry["governance"] = governance
        models.append(entry)
    return models


def _write_json(path: Path, document: Any) -> dict[str, Any]:
    output = _Output(path)
    output.line(json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False))
    return output.close()


def _audit_export(
    engine: Engine,
    actor: Actor,
    request: ExportRequest,
    manifest: Mapping[str, Any],
    when: datetime,
) -> None:
    lines = {f["name"]: f["lines"] for f in manifest["files"]}
    with engine.begin() as conn:
        append(
            conn,
            "AuditEvent",
            activity_event(
                "package-exported",
                actor=actor,
                action="R",
                when=when,
                export=True,
                patient_id=request.patient or "",
                detail={
                    "period-from": request.start.isoformat(),
                    "period-to": request.end.isoformat(),
                    "mask-phi": str(request.mask_phi).lower(),
                    "audit-events": str(lines.get("AuditEvent.ndjson", 0)),
                    "provenances": str(lines.get("Provenance.ndjson", 0)),
                    "manifest-sha256": hashlib.sha256(
                        canonical_json(manifest).encode("utf-8")
                    ).hexdigest(),
                },
            ),
        )
