"""Small ONNX graphs with the ops real CNNs use, built in code for the LiteRT tests."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


class _Builder:
    def __init__(self, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        self.nodes: list = []
        self.inits: list = []
        self.count = 0

    def name(self, stem: str) -> str:
        self.count += 1
        return f"{stem}{self.count}"

    def const(self, value: np.ndarray) -> str:
        name = self.name("c")
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(self, op: str, inputs: list[str], **attrs) -> str:
        out = self.name(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [out], name=self.name(op), **attrs))
        return out

    def conv(
        self,
        x: str,
        cin: int,
        cout: int,
        k: int = 3,
        stride: int = 1,
        group: int = 1,
        pad: int | None = None,
    ) -> str:
        w = self.rng.standard_normal((cout, cin // group, k, k)).astype(np.float32)
        w *= np.sqrt(2.0 / (cin // group * k * k))
        b = (0.1 * self.rng.standard_normal(cout)).astype(np.float32)
        p = k // 2 if pad is None else pad
        return self.node(
            "Conv",
            [x, self.const(w), self.const(b)],
            kernel_shape=[k, k],
            strides=[stride, stride],
            pads=[p, p, p, p],
            group=group,
        )

    def model(self, inputs, outputs) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, "g", inputs, outputs, self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        onnx.checker.check_model(model)
        return onnx.shape_inference.infer_shapes(model)


def mobile_block_model(seed: int = 0) -> onnx.ModelProto:
    """NCHW input; stride-2 conv with symmetric pads, depthwise conv, HardSwish, a
    squeeze-excitation gate (HardSigmoid), swish (Sigmoid * x), ReLU6, a residual Add, max and
    average pooling, Concat, a Gemm head with Softmax, and two outputs (the class
    probabilities and a 4-D feature map)."""
    b = _Builder(seed)
    x = "x"
    t = b.conv(x, 3, 8, 3, stride=2)  # pads 1,1: not TFLite's SAME for stride 2
    t = b.node("HardSwish", [t])
    d = b.conv(t, 8, 8, 3, group=8)  # depthwise
    d = b.node("Clip", [d, b.const(np.float32(0)), b.const(np.float32(6))])
    se = b.node("GlobalAveragePool", [d])
    se = b.conv(se, 8, 4, 1)
    se = b.node("Relu", [se])
    se = b.conv(se, 4, 8, 1)
    se = b.node("HardSigmoid", [se], alpha=1 / 6, beta=0.5)
    d = b.node("Mul", [d, se])
    e = b.conv(d, 8, 8, 1)
    e = b.node("Mul", [e, b.node("Sigmoid", [e])])  # swish
    r = b.node("Add", [e, t])
    m = b.node("MaxPool", [r], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    a = b.node("AveragePool", [r], kernel_shape=[2, 2], strides=[2, 2])
    c = b.node("Concat", [m, a], axis=1)
    feat = b.conv(c, 16, 16, 3)
    feat = b.node("Relu", [feat])
    g = b.node("GlobalAveragePool", [feat])
    f = b.node("Flatten", [g], axis=1)
    w = (0.3 * b.rng.standard_normal((10, 16))).astype(np.float32)
    logits = b.node("Gemm", [f, b.const(w), b.const(np.zeros(10, np.float32))], transB=1)
    probs = b.node("Softmax", [logits], axis=-1)
    return b.model(
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
        [
            helper.make_tensor_value_info(probs, TensorProto.FLOAT, [1, 10]),
            helper.make_tensor_value_info(feat, TensorProto.FLOAT, [1, 16, 4, 4]),
        ],
    )


def unsupported_op_model(shape=(1, 1, 8, 8), classes: int = 10) -> onnx.ModelProto:
    """A classifier with an Erf (GELU-style) in it: the converter has no Erf."""
    b = _Builder(1)
    t = b.conv("x", shape[1], 4, 3)
    t = b.node("Erf", [t])
    f = b.node("Flatten", [t], axis=1)
    n = 4 * shape[2] * shape[3]
    w = (0.1 * b.rng.standard_normal((classes, n))).astype(np.float32)
    out = b.node("Gemm", [f, b.const(w), b.const(np.zeros(classes, np.float32))], transB=1)
    return b.model(
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, [1, classes])],
    )
