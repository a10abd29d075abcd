"""Real zoos for the fleet tests: the example teacher compiled for two targets with ONNX Runtime
(no students, FP32, estimated latency: a few seconds), and a registry on loopback."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import tarfile
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import onnx
from click.testing import CliRunner

from edgec.bundle.registry import make_server
from edgec.cli import main

REPO = Path(__file__).resolve().parents[2]
TEACHER = REPO / "examples" / "digits" / "teacher.onnx"
TARGETS = "raspberry-pi-4,coral-dev-board"
FAST = ("--students", "none", "--precision", "fp32", "--backend", "onnxruntime")


def run(*args):
    """The real CLI, in process."""
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def compile_zoo(model: Path, zoo: Path, *extra) -> None:
    """``edgec compile MODEL --target TARGETS -o ZOO`` with the fast flags; must succeed."""
    result = run("compile", model, "--target", TARGETS, "-o", zoo, *FAST, *extra)
    assert result.exit_code == 0, result.output


def second_teacher(directory: Path) -> Path:
    """The example teacher with another doc string: same network, another source hash, so its
    bundles (and the zoo's version) differ."""
    model = onnx.load(TEACHER)
    model.doc_string = "version 2"
    path = directory / "teacher-v2.onnx"
    onnx.save(model, path)
    return path


@contextlib.contextmanager
def registry(zoo: Path) -> Iterator[str]:
    """A registry for ``zoo`` on a free loopback port; yields its base URL."""
    server = make_server(zoo, "127.0.0.1", 0, request_timeout_s=5.0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def request(url: str, body: bytes | dict | None = None, device_id: str | None = None):
    """``(status, parsed JSON or raw bytes)`` of a GET (no body) or POST."""
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    headers = {"X-Edgec-Device-Id": device_id} if device_id else {}
    req = urllib.request.Request(url, data=data, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as response:
            status, raw, kind = response.status, response.read(), response.headers["Content-Type"]
    except urllib.error.HTTPError as err:
        status, raw, kind = err.code, err.read(), err.headers["Content-Type"]
    return status, json.loads(raw) if kind == "application/json" else raw


def fetch_and_unpack(base: str, answer: dict, into: Path) -> Path:
    """Download the answer's archive, check its hash, unpack it; the bundle directory."""
    status, raw = request(base + answer["archive_url"])
    assert status == 200
    assert hashlib.sha256(raw).hexdigest() == answer["archive_sha256"]
    assert len(raw) == answer["archive_bytes"]
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:gz") as tar:
        tar.extractall(into, filter="data")
    return into / answer["target"]
