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
