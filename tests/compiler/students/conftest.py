"""Fixtures shared by the students' tests: the example digits teacher, canonical."""

from __future__ import annotations

import onnx
import pytest

from edgec.compiler.canonicalize import canonicalize
from edgec.compiler.loading import load_model


@pytest.fixture(scope="session")
def digits_teacher(request) -> onnx.ModelProto:
    """The example teacher, canonical (its BatchNorms folded into the convolutions)."""
    teacher_path = request.config.rootpath / "examples" / "digits" / "teacher.onnx"
    return canonicalize(load_model(teacher_path, {}).proto)
