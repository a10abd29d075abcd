"""Helpers for the runtime tests: the loopback target, gateway processes, /proc probes.

Every server binds 127.0.0.1 on a free port; every wait is bounded.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TEACHER = REPO / "examples" / "digits" / "teacher.onnx"
RTT_MS = 6.0
BUDGET_MS = 40.0
STARTUP_S = 90.0


def write_loopback_target(directory: Path, rtt_ms: float = RTT_MS) -> Path:
    """A descriptor for this machine with a gateway on this machine over an ``rtt_ms`` link."""
    path = directory / "loopback.yaml"
    path.write_text(
        f"""name: loopback
kind: host
description: this machine, offloading to a gateway on this machine (tests)
sources: [edgec tests]
cpu: {{arch: x86_64, model: test, cores: 2, clock_ghz: 2.0, peak_gflops_fp32: 100,
       peak_gops_int8: 200}}
memory: {{ram_gb: 8, bandwidth_gbps: 20}}
power: {{typical_w: 10, max_w: 20}}
precisions: [fp32]
backends: [onnxruntime]
gateway: {{target: host, link: {{rtt_ms: {rtt_ms}, bandwidth_mbps: 50}}}}
"""
    )
    return path


class GatewayProcess:
    """``edgec serve BUNDLE --tier gateway --port 0`` in a subprocess, killed on close."""

    def __init__(self, bundle: Path, log: Path, *extra: str):
        self.log = log
        command = [sys.executable, "-m", "edgec", "serve", str(bundle), "--tier", "gateway"]
        self.process = subprocess.Popen(
            [*command, "--host", "127.0.0.1", "--port", "0", *extra],
            stdout=subprocess.PIPE,
            stderr=log.open("wb"),
            text=True,
        )
        self.url = self._wait_for_url()
        self.port = int(self.url.rsplit(":", 1)[1])

    def _wait_for_url(self) -> str:
        found: list[str] = []
        reader = threading.Thread(
            target=lambda: found.append(self.process.stdout.readline()), daemon=True
        )
        reader.start()
        reader.join(STARTUP_S)
        line = found[0].strip() if found else ""
        if "listening on http://" not in line:
            self.close()
            raise AssertionError(f"gateway did not start: {line!r} {self.log.read_text()}")
        return line.rsplit(" ", 1)[1]

    def kill(self) -> None:
        """SIGKILL: the gateway dies without a goodbye."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=10)

    def terminate(self) -> int:
        """SIGTERM and wait: the exit code of a clean shutdown."""
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=10)

    def close(self) -> None:
        """Kill it if it still runs and close its pipe."""
        self.kill()
        self.process.stdout.close()


def process_threads(pid: int) -> int:
    """Threads of a process (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise AssertionError("no Threads line")


def process_fds(pid: int) -> int:
    """Open file descriptors of a process (Linux)."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def wait_until(predicate, seconds: float = 5.0, step: float = 0.05) -> bool:
    """Poll ``predicate`` until it holds or ``seconds`` pass (bounded)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()
