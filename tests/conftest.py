"""Shared fixtures: paths to the example teacher and small models built on the fly."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

REPO = Path(__file__).resolve().parent.parent
TEACHER = REPO / "examples" / "digits" / "teacher.onnx"

# tests/models.py is imported as a plain module by tests in subfolders.
sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture
def teacher_path() -> Path:
    """The committed example teacher."""
    return TEACHER


def tiny_conv_model(
    dynamic: bool = False, opset: int = 17, dynamic_height: bool | None = None
) -> onnx.ModelProto:
    """Conv -> Relu -> GlobalAveragePool -> Flatten -> Gemm, input 'input' [1,3,16,16].

    ``dynamic`` makes the batch dynamic, and the height too unless ``dynamic_height`` says.
    """
    rng = np.random.default_rng(0)
    batch = "N" if dynamic else 1
    height = "H" if (dynamic if dynamic_height is None else dynamic_height) else 16
    inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, height, 16])]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, 4])]
    inits = [
        numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "b"),
        numpy_helper.from_array(rng.standard_normal((4, 8)).astype(np.float32), "fc_w"),
        numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "fc_b"),
    ]
    nodes = [
        helper.make_node("Conv", ["input", "w", "b"], ["c"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("GlobalAveragePool", ["r"], ["p"], name="pool"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["logits"], transB=1, name="fc"),
    ]
    graph = helper.make_graph(nodes, "tiny", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


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
