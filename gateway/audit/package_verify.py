"""`hitl-gateway audit verify-package`: check an audit package offline with only the public key.

Checks, in order: the manifest's JWS verifies with the given JWKS and signs exactly
`manifest.json`; every listed file exists with its SHA-256, size and line count and no unlisted
file was added; the latest checkpoint carried in the manifest verifies with the same keys; and,
for an unmasked package, each record hashes to its `chain.ndjson` entry, records that follow each
other in the chain link, and a record at the checkpoint's `seq` has the signed hash.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fhir_mapping.canonical import canonical_json
from gateway.audit.package import MANIFEST, MANIFEST_JWS, PACKAGE_TYPE, PUBLIC_JWKS
from gateway.audit.signing import SignatureError, verify_jws
from gateway.audit.trail import chain_hash


@dataclass(slots=True)
class PackageReport:
    """The outcome: `ok`, what was checked, and every problem found."""

    ok: bool = True
    problems: list[str] = field(default_factory=list)
    checked: list[str] = field(default_factory=list)
    manifest: dict[str, Any] = field(default_factory=dict)

    def fail(self, problem: str) -> None:
        """Record a problem."""
        self.ok = False
        self.problems.append(problem)


def verify_package(path: Path, jwks: dict[str, Any]) -> PackageReport:
    """Check the package directory `path` against the public keys `jwks`."""
    report = PackageReport()
    try:
        jws = (path / MANIFEST_JWS).read_text(encoding="ascii").strip()
        manifest_text = (path / MANIFEST).read_text(encoding="utf-8")
    except OSError as exc:
        report.fail(f"cannot read the manifest: {exc}")
        return report
    try:
        key_id, signed = verify_jws(jws, jwks)
    except SignatureError as exc:
        report.fail(f"manifest signature: {exc}")
        return report
    try:
        manifest = json.loads(manifest_text)
    except ValueError:
        report.fail("manifest.json is not JSON")
        return report
    if canonical_json(manifest) != canonical_json(signed) or signed.get("type") != PACKAGE_TYPE:
        report.fail("manifest.json differs from the signed manifest")
        return report
    report.manifest = manifest
    report.checked.append(f"manifest signed by key {key_id}")
    _check_files(path, manifest, report)
    _check_checkpoint(manifest, jwks, report)
    if not manifest.get("maskPhi") and report.ok:
        _check_chain(path, manifest, report)
    return report


def _check_files(path: Path, manifest: dict[str, Any], report: PackageReport) -> None:
    listed = {f["name"]: f for f in manifest.get("files", ())}
    present = {p.name for p in path.iterdir() if p.is_file()}
    for extra in sorted(present - set(listed) - {MANIFEST, MANIFEST_JWS, PUBLIC_JWKS}):
        report.fail(f"{extra} is not listed in the manifest")
    for name, entry in sorted(listed.items()):
        file = path / name
        if Path(name).name != name or not file.is_file():
            report.fail(f"{name} is missing")
            continue
        data = file.read_bytes()
        if hashlib.sha256(data).hexdigest() != entry["sha256"] or len(data) != entry["bytes"]:
            report.fail(f"{name} was changed (SHA-256 or size differs from the manifest)")
        elif data.count(b"\n") != entry["lines"]:
            report.fail(f"{name} has another number of lines than the manifest")
    report.checked.append(f"{len(listed)} files match their SHA-256")


def _check_checkpoint(
    manifest: dict[str, Any], jwks: dict[str, Any], report: PackageReport
) -> None:
    checkpoint = manifest.get("checkpoint")
    if not checkpoint:
        report.checked.append("no checkpoint carried (the chain had none yet)")
        return
    try:
        _, payload = verify_jws(str(checkpoint["jws"]), jwks)
    except SignatureError as exc:
        report.fail(f"checkpoint {checkpoint.get('number')}: {exc}")
        return
    if (payload.get("seq"), payload.get("hash")) != (checkpoint["seq"], checkpoint["hash"]):
        report.fail("the manifest's checkpoint differs from what its signature covers")
        return
    report.checked.append(
        f"checkpoint {checkpoint['number']} (record {checkpoint['seq']}) signature verifies"
    )


def _check_chain(path: Path, manifest: dict[str, Any], report: PackageReport) -> None:
    chain = [json.loads(line) for line in _lines(path / "chain.ndjson")]
    records = {kind: iter(_lines(path / f"{kind}.ndjson")) for kind in ("AuditEvent", "Provenance")}
    checkpoint = manifest.get("checkpoint") or {}
    previous: dict[str, Any] | None = None
    for entry in chain:
        text = next(records[entry["resourceType"]], None)
        seq = entry["seq"]
        if text is None:
            report.fail(f"record {seq} is listed in chain.ndjson but missing")
            return
        if chain_hash(entry["prevHash"], text) != entry["hash"]:
            report.fail(f"record {seq} does not match its hash (edited)")
            return
        follows = previous is not None and previous["seq"] + 1 == seq
        if follows and previous is not None and entry["prevHash"] != previous["hash"]:
            report.fail(f"record {seq} does not link to record {seq - 1}")
            return
        if seq == checkpoint.get("seq") and entry["hash"] != checkpoint.get("hash"):
            report.fail(f"record {seq} differs from the signed checkpoint")
            return
        previous = entry
    report.checked.append(f"{len(chain)} records recompute to their chain hashes")


def _lines(path: Path) -> list[str]:
    if not path.exists():
        return []
    return path.read_text(encoding="utf-8").splitlines()


def format_package_report(report: PackageReport) -> str:
    """Lines for the auditor: what was checked, then OK or each problem."""
    lines = [f"checked: {c}" for c in report.checked]
    if report.ok:
        lines.append("audit package OK")
    else:
        lines += [f"PROBLEM: {p}" for p in report.problems]
        lines.append("audit package NOT VERIFIED")
    return "\n".join(lines)
