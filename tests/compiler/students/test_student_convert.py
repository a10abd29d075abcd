"""ONNX -> torch conversion: real teachers and an op-rich graph match ONNX Runtime; a node the
converter cannot represent is named."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from models import randomized_light_model
from onnx import TensorProto, helper, numpy_helper
from student_nets import canonical_teacher, random_inputs

from edgec.compiler.canonicalize import canonicalize
from edgec.compiler.loading import load_model
from edgec.compiler.students.convert import (
    UnsupportedModelError,
    check_against_onnxruntime,
    onnx_to_torch,
)
from edgec.data import load_dataset


def _canonical(model: onnx.ModelProto, tmp_path: Path) -> onnx.ModelProto:
    path = tmp_path / "model.onnx"
    onnx.save(model, path)
    return canonicalize(load_model(path, {}).proto)


def test_digits_teacher_converts_to_real_layers_that_match_onnxruntime(teacher_path):
    """Conv/Gemm become nn.Conv2d/nn.Linear; the head is fc2; fx traces it; outputs match."""
    teacher = canonicalize(load_model(teacher_path, {}).proto)
    module = onnx_to_torch(teacher)
    kinds = [type(layer).__name__ for layer in module.layers.values()]
    assert kinds == ["Conv2d", "Conv2d", "Conv2d", "Linear", "Linear"]
    assert [layer.out_features for layer in module.head_layers()] == [10]
    x = load_dataset("digits").x_val[:16]
    assert check_against_onnxruntime(module, teacher, x) < 1e-5
    traced = torch.fx.symbolic_trace(module)
    with torch.no_grad():
        np.testing.assert_allclose(
            traced(torch.from_numpy(x)).numpy(), module(torch.from_numpy(x)).numpy(), atol=1e-6
        )


@pytest.mark.parametrize("name", ["residual", "depthwise", "concat"])
def test_test_nets_convert_and_match_onnxruntime_on_a_batch(name, tmp_path):
    teacher = canonical_teacher(name, tmp_path)
    module = onnx_to_torch(teacher)
    assert check_against_onnxruntime(module, teacher, random_inputs(3)) < 1e-5


def test_squeezenet_from_the_onnx_wheel_converts(tmp_path):
    """A real Caffe2-era architecture (opset 9, Concat, Dropout, Softmax) matches ORT."""
    teacher = _canonical(randomized_light_model("squeezenet"), tmp_path)
    module = onnx_to_torch(teacher)
    x = random_inputs(2, (1, 3, 224, 224))
    assert check_against_onnxruntime(module, teacher, x) < 1e-4


def _op_zoo() -> onnx.ModelProto:
    """Many translated ops in one graph, with asymmetric pads and per-channel constants."""
    rng = np.random.default_rng(0)

    def init(name, *shape, scale=0.3):
        values = (rng.standard_normal(shape) * scale).astype(np.float32)
        return numpy_helper.from_array(values, name)

    inits = [
        init("w1", 8, 3, 3, 3),
        init("b1", 8),
        numpy_helper.from_array(np.abs(rng.standard_normal(8)).astype(np.float32) + 0.5, "bn_s"),
        init("bn_b", 8),
        init("bn_m", 8, scale=0.1),
        numpy_helper.from_array(np.abs(rng.standard_normal(8)).astype(np.float32) + 0.5, "bn_v"),
        init("scale", 8, 1, 1),
        init("wt", 8, 4, 2, 2),
        init("w2", 4, 1, 3, 3),
        init("fc", 12, 5),
        init("fc_b", 5),
        numpy_helper.from_array(np.array([0.0], np.float32), "zero"),
        numpy_helper.from_array(np.array([6.0], np.float32), "six"),
        numpy_helper.from_array(np.array([0, 0, 0, 1, 0, 0, 1, 0], np.int64), "pads"),
        numpy_helper.from_array(np.array([2, 3], np.int64), "axes"),
        numpy_helper.from_array(np.array([1], np.int64), "ax1"),
    ]
    nodes = [
        helper.make_node("Sub", ["x", "zero"], ["x0"]),
        helper.make_node("Div", ["x0", "six"], ["x1"]),
        helper.make_node("Conv", ["x1", "w1", "b1"], ["c1"], pads=[0, 1, 1, 0], name="conv_asym"),
        helper.make_node(
            "BatchNormalization", ["c1", "bn_s", "bn_b", "bn_m", "bn_v"], ["n1"], epsilon=1e-3
        ),
        helper.make_node("Clip", ["n1", "zero", "six"], ["r1"]),
        helper.make_node("Mul", ["r1", "scale"], ["s1"], name="per_channel_scale"),
        helper.make_node("HardSwish", ["s1"], ["h1"]),
        helper.make_node("ConvTranspose", ["h1", "wt"], ["t1"], strides=[2, 2], name="up"),
        helper.make_node("LeakyRelu", ["t1"], ["l1"], alpha=0.1),
        helper.make_node("Pad", ["l1", "pads"], ["p1"]),
        helper.make_node("Conv", ["p1", "w2"], ["d1"], group=4, pads=[1, 1, 1, 1], name="dw"),
        helper.make_node("HardSigmoid", ["d1"], ["g1"], alpha=0.25, beta=0.4),
        helper.make_node(
            "AveragePool",
            ["g1"],
            ["a1"],
            kernel_shape=[3, 3],
            strides=[2, 2],
            pads=[0, 0, 1, 1],
            name="avg_asym",
        ),
        helper.make_node("MaxPool", ["d1"], ["m1"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Concat", ["a1", "m1"], ["cat"], axis=1),
        helper.make_node("ReduceMean", ["cat"], ["rm"], axes=[2, 3], keepdims=1),
        helper.make_node("Squeeze", ["rm", "axes"], ["sq"]),
        helper.make_node("GlobalAveragePool", ["d1"], ["gp"]),
        helper.make_node("Flatten", ["gp"], ["fl"], axis=1),
        helper.make_node("Concat", ["sq", "fl"], ["feat"], axis=1),
        helper.make_node("Sigmoid", ["feat"], ["sg"]),
        helper.make_node("Transpose", ["sg"], ["tr"], perm=[0, 1]),
        helper.make_node("MatMul", ["tr", "fc"], ["mm"], name="fc"),
        helper.make_node("Add", ["mm", "fc_b"], ["lo"]),
        helper.make_node("Unsqueeze", ["lo", "ax1"], ["un"]),
        helper.make_node("Squeeze", ["un", "ax1"], ["sq2"]),
        helper.make_node("Softmax", ["sq2"], ["y"], axis=-1),
    ]
    graph = helper.make_graph(
        nodes,
        "zoo",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_op_rich_graph_matches_onnxruntime(tmp_path):
    """Asymmetric conv/avg-pool pads, ConvTranspose, depthwise conv, BN, Clip, HardSwish,
    HardSigmoid, Pad, Concat, ReduceMean, Squeeze/Unsqueeze, MatMul+Add, Softmax."""
    teacher = _canonical(_op_zoo(), tmp_path)
    module = onnx_to_torch(teacher)
    kinds = {type(layer).__name__ for layer in module.layers.values()}
    assert {"Conv2d", "ConvTranspose2d", "Linear"} <= kinds
    assert check_against_onnxruntime(module, teacher, random_inputs(4, (1, 3, 8, 8))) < 1e-5
    # The per-channel scale (shape [8, 1, 1]) is a parameter pruning can slice on axis 0.
    assert 0 in module.unwrapped.values()
    # Before canonicalisation the graph still has BatchNormalization, Pad, Sub, Transpose and
    # Flatten nodes (folded or fused away above): they convert too.
    raw = onnx.shape_inference.infer_shapes(_op_zoo(), strict_mode=True)
    module = onnx_to_torch(raw)
    assert {"BatchNormalization", "Pad", "Sub", "Transpose", "Flatten"} <= {
        step.op for step in module.steps
    }
    assert check_against_onnxruntime(module, raw, random_inputs(4, (1, 3, 8, 8))) < 1e-5


def test_an_unsupported_op_is_named_with_its_node(tmp_path):
    nodes = [
        helper.make_node("Relu", ["x"], ["r"]),
        helper.make_node("InstanceNormalization", ["r", "s", "b"], ["y"], name="inorm"),
    ]
    inits = [
        numpy_helper.from_array(np.ones(3, np.float32), "s"),
        numpy_helper.from_array(np.zeros(3, np.float32), "b"),
    ]
    graph = helper.make_graph(
        nodes,
        "unsupported",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 4, 4])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(UnsupportedModelError) as info:
        onnx_to_torch(_canonical(model, tmp_path))
    assert info.value.op == "InstanceNormalization" and info.value.node == "inorm"
    assert "InstanceNormalization (node 'inorm')" in str(info.value)
