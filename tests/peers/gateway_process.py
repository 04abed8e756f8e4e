"""The gateway as a separate process, driven exactly as an operator would drive it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping
from pathlib import Path

from tests.conftest import free_port
from tests.peers.netguard import strace_prefix


class GatewayProcess:
    """`hitl-gateway serve` on 127.0.0.1 with its own data directory and free ports."""

    def __init__(self, data_dir: Path, database_url: str, extra_env: Mapping[str, str]) -> None:
        self.data_dir = data_dir
        self.dicom_port = free_port()
        self.http_port = free_port()
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("HITL_GATEWAY_")},
            "HITL_GATEWAY_STORAGE__DATA_DIR": str(data_dir),
            "HITL_GATEWAY_DATABASE__URL": database_url,
            "HITL_GATEWAY_DICOM__HOST": "127.0.0.1",
            "HITL_GATEWAY_DICOM__PORT": str(self.dicom_port),
            "HITL_GATEWAY_HTTP__HOST": "127.0.0.1",
            "HITL_GATEWAY_HTTP__PORT": str(self.http_port),
            **extra_env,
        }
        self.proc: subprocess.Popen[str] | None = None
        self.log_path = data_dir / "gateway.log"

    @property
    def base_url(self) -> str:
        """HTTP base of the running gateway."""
        return f"http://127.0.0.1:{self.http_port}"

    def cli(self, *args: str, check: bool = True, trace: Path | None = None) -> str:
        """Run a `hitl-gateway` sub-command with this gateway's settings; returns stdout."""
        cmd = [sys.executable, "-m", "gateway.cli", *args]
        if trace is not None:
            cmd = [*strace_prefix(trace), *cmd]
        done = subprocess.run(
            cmd, env=self.env, capture_output=True, text=True, timeout=300, check=False
        )
        if check and done.returncode != 0:
            raise AssertionError(
                f"hitl-gateway {' '.join(args)} exited {done.returncode}:\n"
                f"{done.stdout}\n{done.stderr}"
            )
        return done.stdout if check else f"{done.returncode}\n{done.stdout}{done.stderr}"

    def start(self, *, trace: Path | None = None, timeout: float = 60) -> GatewayProcess:
        """Start `serve` and return once /healthz answers."""
        cmd = [sys.executable, "-m", "gateway.cli", "serve"]
        if trace is not None:
            cmd = [*strace_prefix(trace), *cmd]
        log = self.log_path.open("a", encoding="utf-8")
        self.proc = subprocess.Popen(
            cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT, text=True
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"gateway exited early:\n{self.log()}")
            try:
                with urllib.request.urlopen(f"{self.base_url}/healthz", timeout=1) as r:  # noqa: S310
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.1)
        raise AssertionError(f"gateway not healthy within {timeout} s:\n{self.log()}")

    def stop(self) -> int:
        """Stop the process by its id (SIGTERM, then SIGKILL) and return its exit code."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            # Under strace the gateway is strace's child: signal the gateway itself, and strace
            # ends when its tracee does.
            os.kill(self._gateway_pid(), signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        return int(self.proc.returncode)

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self._gateway_pid(), signal.SIGKILL)
            self.proc.wait(timeout=10)

    def _gateway_pid(self) -> int:
        assert self.proc is not None
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        if (
            Path(f"/proc/{self.proc.pid}/cmdline").read_bytes().split(b"\0")[0].endswith(b"strace")
            and children.exists()
        ):
            pids = children.read_text().split()
            if pids:
                return int(pids[0])
        return self.proc.pid

    def log(self) -> str:
        """What the gateway printed so far."""
        return self.log_path.read_text(encoding="utf-8") if self.log_path.exists() else ""
