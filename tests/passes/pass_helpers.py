"""Helpers for pass tests: small models built with onnx.helper, run a pass, compare on ORT."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from edgec.runtime.loaders import session_options

RTOL, ATOL = 1e-4, 1e-5


def _initializer(name: str, value: np.ndarray) -> onnx.TensorProto:
    value = np.asarray(value)
    return numpy_helper.from_array(
        value.astype(np.float32) if value.dtype.kind == "f" else value, name
    )


def make_model(
    nodes: list[onnx.NodeProto],
    inputs: dict[str, list[int]],
    outputs: list[str | tuple[str, int]],
    initializers: dict[str, np.ndarray],
    opset: int = 17,
    ir_version: int = 8,
) -> onnx.ModelProto:
    """A model with float32 inputs (float initializers become float32, others keep their type);
    outputs are names (float) or ``(name, TensorProto type)`` and get shapes from inference."""
    graph = helper.make_graph(
        nodes,
        "test",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs.items()],
        [
            helper.make_tensor_value_info(*(o if isinstance(o, tuple) else (o, 1)), None)
            for o in outputs
        ],
        [_initializer(k, v) for k, v in initializers.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = ir_version
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    onnx.checker.check_model(model)
    return model


def run_pass(model: onnx.ModelProto, pass_) -> tuple[onnx.ModelProto, bool]:
    """``model`` after ``pass_`` (on onnx_ir), and the pass's ``modified``."""
    ir_model = ir.serde.deserialize_model(model)
    result = pass_(ir_model)
    proto = ir.serde.serialize_model(result.model)
    onnx.checker.check_model(proto)
    return proto, result.modified


def ops(model: onnx.ModelProto) -> list[str]:
    """Op types in graph order."""
    return [n.op_type for n in model.graph.node]


def run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Outputs on ONNX Runtime with graph optimisations off (so ORT does not fuse for us)."""
    session = ort.InferenceSession(
        model.SerializeToString(), session_options("disabled"), providers=["CPUExecutionProvider"]
    )
    return session.run(None, feeds)


def random_feeds(model: onnx.ModelProto, seed: int = 0) -> dict[str, np.ndarray]:
    """Standard-normal float32 values for every real input."""
    rng = np.random.default_rng(seed)
    inits = {i.name for i in model.graph.initializer}
    feeds = {}
    for value in model.graph.input:
        if value.name in inits:
            continue
        shape = [d.dim_value for d in value.type.tensor_type.shape.dim]
        feeds[value.name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


def assert_same_outputs(before: onnx.ModelProto, after: onnx.ModelProto, seed: int = 0) -> None:
    """Both models give the same outputs on ORT within RTOL/ATOL, and they are not degenerate."""
    feeds = random_feeds(before, seed)
    expected, actual = run(before, feeds), run(after, feeds)
    assert len(expected) == len(actual)
    for want, got in zip(expected, actual, strict=True):
        assert np.abs(want).max() > 1e-3
        np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)
