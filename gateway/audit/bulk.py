"""FHIR Bulk Data system-level `$export` of the audit trail: jobs, their files and status.

Transport-free (the HTTP side is `gateway.listeners.bulk_export`). A job exports, for each
requested type (`AuditEvent`, `Provenance`), the records up to the chain head at kick-off with
`recorded >= _since`, one resource per line (`application/fhir+ndjson`). Jobs live as directories
under `<data_dir>/bulk-export/<id>/` (`job.json` plus one NDJSON file per type), so any replica
sharing the data directory can answer status and file requests; only the job's owner may.
Masking for auditors without PHI rights is applied by the caller's `transform`.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, select

from fhir_mapping.canonical import canonical_json
from gateway.audit.trail import AUDITED_TYPES, HEAD_ID
from gateway.domain.errors import InvalidInput, NotFound
from gateway.persistence.tables import audit_head, audit_log

NDJSON_FORMATS = frozenset({"application/fhir+ndjson", "application/ndjson", "ndjson"})
Transform = Callable[[dict[str, Any]], dict[str, Any]]


@dataclass(frozen=True, slots=True)
class ExportJob:
    """A kicked-off export."""

    id: str
    owner: str
    types: tuple[str, ...]
    since: datetime | None
    request_url: str
    transaction_time: str


def parse_kickoff(query: dict[str, str]) -> tuple[tuple[str, ...], datetime | None]:
    """`_type` and `_since` of a kick-off request (Bulk Data IG: query parameters)."""
    unknown = set(query) - {"_type", "_since", "_outputFormat"}
    if unknown:
        raise InvalidInput(
            f"unsupported $export parameter(s): {sorted(unknown)}", code="not-supported"
        )
    output_format = query.get("_outputFormat", "application/fhir+ndjson")
    if output_format not in NDJSON_FORMATS:
        raise InvalidInput(
            f"_outputFormat {output_format!r} is not supported", code="not-supported"
        )
    types = tuple(t for t in query.get("_type", "AuditEvent,Provenance").split(",") if t)
    bad = [t for t in types if t not in AUDITED_TYPES]
    if bad or not types:
        raise InvalidInput(
            f"_type may name AuditEvent and Provenance only, not {bad}", code="not-supported"
        )
    since = None
    if "_since" in query:
        try:
            since = datetime.fromisoformat(query["_since"].replace("Z", "+00:00"))
        except ValueError:
            raise InvalidInput(
                f"_since {query['_since']!r} is not an instant", code="value"
            ) from None
        if since.tzinfo is None:
            raise InvalidInput("_since must be an instant with a time zone", code="value")
    return tuple(dict.fromkeys(types)), since


class BulkExportStore:
    """The job directories."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def create(
        self, owner: str, types: tuple[str, ...], since: datetime | None, url: str
    ) -> ExportJob:
        """Record a new job as in progress."""
        job = ExportJob(
            uuid.uuid4().hex,
            owner,
            types,
            since,
            url,
            datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        )
        directory = self.root / job.id
        directory.mkdir(parents=True)
        self._write(
            job.id,
            {
                "id": job.id,
                "owner": owner,
                "types": list(types),
                "since": since.isoformat() if since else None,
                "request": url,
                "transactionTime": job.transaction_time,
                "status": "in-progress",
                "progress": "queued",
                "output": [],
                "error": [],
            },
        )
        return job

    def state(self, job_id: str, owner: str) -> dict[str, Any]:
        """The job's state; NotFound for unknown, cancelled or other owners' jobs."""
        path = self._dir(job_id) / "job.json"
        if not path.exists():
            raise NotFound(f"no export job {job_id}")
        state: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        if state["owner"] != owner:
            raise NotFound(f"no export job {job_id}")  # not "forbidden": no hint it exists
        return state

    def file(self, job_id: str, name: str, owner: str) -> Path:
        """One output file of a completed job."""
        state = self.state(job_id, owner)
        names = {Path(o["url"]).name for o in state["output"]}
        if state["status"] != "complete" or name not in names:
            raise NotFound(f"no file {name} in export job {job_id}")
        return self._dir(job_id) / name

    def cancel(self, job_id: str, owner: str) -> None:
        """Delete a job and its files (Bulk Data: DELETE on the status URL)."""
        self.state(job_id, owner)
        shutil.rmtree(self._dir(job_id), ignore_errors=True)

    def run(
        self,
        engine: Engine,
        job: ExportJob,
        file_url: Callable[[str, str], str],
        transform: Transform | None = None,
        batch_size: int = 2000,
    ) -> dict[str, Any]:
        """Write the job's files and mark it complete (or failed); returns the final state."""
        state = self.state(job.id, job.owner)
        try:
            with engine.connect() as conn:
                head = conn.execute(
                    select(audit_head.c.seq).where(audit_head.c.id == HEAD_ID)
                ).scalar_one()
                for resource_type in job.types:
                    state["progress"] = f"exporting {resource_type}"
                    self._write(job.id, state)
                    name = f"{resource_type}.ndjson"
                    count = self._export_type(
                        conn, job, resource_type, int(head), name, transform, batch_size
                    )
                    if count:
                        state["output"].append(
                            {"type": resource_type, "url": file_url(job.id, name), "count": count}
                        )
            state["status"], state["progress"] = "complete", "done"
        except Exception as exc:  # the job reports any failure to the client that asked
            state["status"], state["progress"] = "failed", f"{type(exc).__name__}"
            state["error"].append({"type": "OperationOutcome", "text": str(exc)[:500]})
        if self._dir(job.id).exists():  # cancelled while running: leave nothing behind
            self._write(job.id, state)
        return state

    def _export_type(
        self,
        conn: Any,
        job: ExportJob,
        resource_type: str,
        head: int,
        name: str,
        transform: Transform | None,
        batch_size: int,
    ) -> int:
        query = select(audit_log.c.resource).where(
            audit_log.c.resource_type == resource_type, audit_log.c.seq <= head
        )
        if job.since is not None:
            query = query.where(audit_log.c.recorded >= job.since.astimezone(UTC))
        count = 0
        with (self._dir(job.id) / name).open("w", encoding="utf-8") as fh:
            rows = conn.execution_options(yield_per=batch_size).execute(
                query.order_by(audit_log.c.seq)
            )
            for text in rows.scalars():
                if transform is not None:
                    text = canonical_json(transform(json.loads(text)))
                fh.write(text + "\n")
                count += 1
        if not count:
            (self._dir(job.id) / name).unlink()
        return count

    def _dir(self, job_id: str) -> Path:
        if not job_id.isalnum():
            raise NotFound(f"no export job {job_id}")
        return self.root / job_id

    def _write(self, job_id: str, state: dict[str, Any]) -> None:
        path = self._dir(job_id) / "job.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state), encoding="utf-8")
        os.replace(tmp, path)
