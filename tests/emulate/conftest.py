"""The Raspberry Pi 4 bundle the emulation tests run, and a PATH on which ``qemu-aarch64``
is a stand-in that must never start (for the tests that stop before it would)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from edgec.compiler import compile_model
from edgec.config import CompileConfig

TEACHER = Path(__file__).resolve().parents[2] / "examples" / "digits" / "teacher.onnx"


@pytest.fixture(scope="session")
def pi_bundle(tmp_path_factory) -> Path:
    """The digits teacher alone for ``raspberry-pi-4``, ONNX Runtime stages."""
    root = tmp_path_factory.mktemp("pi-ort")
    result = compile_model(
        CompileConfig(
            model=TEACHER,
            target="raspberry-pi-4",
            output=root / "bundle",
            backend="onnxruntime",
            students="none",
        )
    )
    assert [s["backend"] for s in result.manifest["stages"]] == ["onnxruntime"]
    return result.bundle


@pytest.fixture
def fake_qemu_path(tmp_path: Path) -> str:
    """A PATH whose ``qemu-aarch64`` fails loudly if anything runs it."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    qemu = bin_dir / "qemu-aarch64"
    qemu.write_text("#!/bin/sh\necho 'qemu must not run in this test' >&2\nexit 99\n")
    qemu.chmod(0o755)
    return str(bin_dir)


@pytest.fixture
def closed_port_url():
    """Makes loopback URLs nothing listens on (a fixture, so that no test imports a conftest
    by name: another folder's conftest may hold that name in sys.modules)."""
    return _closed_port_url


def _closed_port_url(path: str = "") -> str:
    """A loopback URL nothing listens on: a connection to it is refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}{path}"
