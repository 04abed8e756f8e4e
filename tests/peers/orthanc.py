"""Orthanc (Debian package `orthanc`) as a real PACS peer: started on free 127.0.0.1 ports with a
generated configuration, driven by its REST API, stopped by its process id."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tests.conftest import free_port

ORTHANC = shutil.which("Orthanc")
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


class Orthanc:
    """One Orthanc process with its own storage directory."""

    def __init__(
        self,
        directory: Path,
        *,
        ae_title: str = "ORTHANC",
        modalities: dict[str, tuple[str, str, int]] | None = None,
        dicomweb: bool = False,
        extra: dict[str, Any] | None = None,
    ) -> None:
        self.directory = directory
        self.http_port = free_port()
        self.dicom_port = free_port()
        self.ae_title = ae_title
        self.config: dict[str, Any] = {
            "Name": "test-pacs",
            "StorageDirectory": str(directory / "storage"),
            "IndexDirectory": str(directory / "index"),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": ae_title,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomModalities": {k: list(v) for k, v in (modalities or {}).items()},
            "Plugins": [str(DICOMWEB_PLUGIN)] if dicomweb else [],
            "DicomWeb": {"Enable": dicomweb, "Root": "/dicom-web/"},
            "DicomAlwaysAllowStore": True,
            "DicomCheckCalledAet": False,
            "StableAge": 1,
            "ConcurrentJobs": 2,
            **(extra or {}),
        }
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The REST base."""
        return f"http://127.0.0.1:{self.http_port}"

    def start(self, timeout: float = 30) -> Orthanc:
        """Write the configuration, start Orthanc and wait for its REST API."""
        if ORTHANC is None:
            raise RuntimeError("Orthanc is not installed")
        self.directory.mkdir(parents=True, exist_ok=True)
        config = self.directory / "orthanc.json"
        config.write_text(json.dumps(self.config), encoding="utf-8")
        log = (self.directory / "orthanc.log").open("ab")
        env = {**os.environ, "TCP_NODELAY": "1"}
        self.proc = subprocess.Popen(
            [ORTHANC, str(config)], stdout=log, stderr=subprocess.STDOUT, env=env
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Orthanc exited:\n{self.log()}")
            try:
                self.get("/system")
                return self
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"Orthanc not up within {timeout} s:\n{self.log()}")

    def stop(self) -> None:
        """SIGTERM by pid, then SIGKILL."""
        if self.proc is None or self.proc.poll() is not None:
            return
        os.kill(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def log(self) -> str:
        """What Orthanc printed."""
        path = self.directory / "orthanc.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def request(self, method: str, path: str, body: bytes | None = None) -> Any:
        """One REST call; JSON in and out."""
        req = urllib.request.Request(f"{self.url}{path}", data=body, method=method)  # noqa: S310
        if body is not None:
            req.add_header("Content-Type", "application/json" if body[:1] in b"{[" else
                           "application/dicom")  # fmt: skip
        with urllib.request.urlopen(req, timeout=120) as response:  # noqa: S310
            data = response.read()
        return json.loads(data) if data else None

    def get(self, path: str) -> Any:
        """GET a REST resource."""
        return self.request("GET", path)

    def upload(self, path: Path) -> dict[str, Any]:
        """POST /instances with one file."""
        result: dict[str, Any] = self.request("POST", "/instances", path.read_bytes())
        return result

    def send_study(self, modality: str, study_id: str) -> dict[str, Any]:
        """C-STORE a study to a configured modality (synchronously)."""
        body = json.dumps({"Resources": [study_id], "Synchronous": True}).encode()
        result: dict[str, Any] = self.request("POST", f"/modalities/{modality}/store", body)
        return result


def orthanc_error(exc: urllib.error.HTTPError) -> str:
    """The body of a REST error, for assertion messages."""
    return exc.read().decode(errors="replace")
