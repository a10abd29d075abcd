"""Shared fixtures: paths to the example teacher and small models built on the fly."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import onnx
import pytest

REPO = Path(__file__).resolve().parent.parent
TEACHER = REPO / "examples" / "digits" / "teacher.onnx"

# tests/models.py is imported as a plain module by tests in subfolders.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from models import tiny_conv_model  # noqa: E402  (tests/ was just put on the path)


@pytest.fixture(autouse=True)
def _restore_environment():
    """Each test starts from the same environment variables: a bundle run in-process sets the
    TVM runtime's (``TVM_USE_RUNTIME_LIB`` among them, for the whole process, as on a device),
    and a subprocess a later test starts would inherit them."""
    saved = dict(os.environ)
    yield
    if os.environ != saved:
        os.environ.clear()
        os.environ.update(saved)


@pytest.fixture
def teacher_path() -> Path:
    """The committed example teacher."""
    return TEACHER


@pytest.fixture
def tiny_model_path(tmp_path: Path) -> Path:
    """A small static-shape CNN saved to disk."""
    path = tmp_path / "tiny.onnx"
    onnx.save(tiny_conv_model(), path)
    return path


@pytest.fixture
def dynamic_model_path(tmp_path: Path) -> Path:
    """The small CNN with dynamic batch and height."""
    path = tmp_path / "dynamic.onnx"
    onnx.save(tiny_conv_model(dynamic=True), path)
    return path


def _compiled(out: Path, *options: str) -> Path:
    """``edgec compile`` of the example teacher into ``out`` (it must succeed)."""
    from click.testing import CliRunner

    from edgec.cli import main

    argv = ["compile", str(TEACHER), "-o", str(out), *options]
    result = CliRunner().invoke(main, argv, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return out


# Bundles more than one test folder needs, compiled once a session. Read-only: a test that
# changes one works on a copy.


@pytest.fixture(scope="session")
def pi4_litert_int8_bundle(tmp_path_factory) -> Path:
    """The teacher alone for raspberry-pi-4 as a full-integer LiteRT INT8 stage (the LiteRT
    backend's done-when compile; the emulation tests run it on the emulated Pi)."""
    pytest.importorskip("ai_edge_litert", reason="the litert extra is not installed")
    return _compiled(
        tmp_path_factory.mktemp("pi4-litert") / "bundle",
        "--target", "raspberry-pi-4", "--backend", "litert", "--precision", "int8",
        "--data", "digits", "--students", "none", "--measure-seconds", "0.3",
    )  # fmt: skip


@pytest.fixture(scope="session")
def pi4_tvm_bundle(tmp_path_factory) -> Path:
    """The teacher alone for raspberry-pi-4 cross-compiled with TVM (FP32, accuracy on
    digits): an aarch64 object this machine cannot load."""
    pytest.importorskip("tvm", reason="the tvm extra is not installed: pip install 'edgec[tvm]'")
    from edgec.targets import get_backend, load_target

    ok, why = get_backend("tvm").can_build(load_target("raspberry-pi-4"))
    if not ok:  # no cross compiler, or no C library for it (make test installs both)
        pytest.skip(why)
    return _compiled(
        tmp_path_factory.mktemp("pi4-tvm") / "bundle",
        "--target", "raspberry-pi-4", "--backend", "tvm", "--precision", "fp32",
        "--data", "digits", "--students", "none",
    )  # fmt: skip
