"""Small models for the TVM tests (a module of its own: ``conftest`` names are ambiguous)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def small_cnn(dynamic: bool = False) -> onnx.ModelProto:
    """Conv -> Relu -> GlobalAveragePool -> Flatten -> Gemm; input 'input' [1, 3, 16, 16].

    Four tunable kernels after fusion, so a 2-trial MetaSchedule run stays short.
    """
    rng = np.random.default_rng(0)
    batch = "N" if dynamic else 1
    inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, 16, 16])]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, 4])]
    weights = [
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
    graph = helper.make_graph(nodes, "small_cnn", inputs, outputs, weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def without_final_softmax(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with a trailing Softmax removed, so it outputs logits.

    Most light models end in Softmax; with random weights its output is near-uniform or
    saturated (one-hot), and probabilities then agree between runtimes whatever the logits do.
    Comparing logits is the real check.
    """
    graph = model.graph
    producer = {out: node for node in graph.node for out in node.output}
    last = producer.get(graph.output[0].name)
    if last is None or last.op_type != "Softmax":
        return model
    graph.node.remove(last)
    graph.output[0].name = last.input[0]  # Softmax keeps its input's type and shape
    return model
