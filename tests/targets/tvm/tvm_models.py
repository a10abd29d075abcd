"""Small models for the TVM tests (a module of its own: ``conftest`` names are ambiguous)."""

from __future__ import annotations

import onnx
from models import tiny_conv_model


def small_cnn(dynamic: bool = False) -> onnx.ModelProto:
    """Conv -> Relu -> GlobalAveragePool -> Flatten -> Gemm; input 'input' [1, 3, 16, 16].

    The suite's tiny CNN (``conftest.tiny_conv_model``) with at most its batch dynamic: four
    tunable kernels after fusion, so a 2-trial MetaSchedule run stays short.
    """
    model = tiny_conv_model(dynamic=dynamic, dynamic_height=False)
    model.graph.name = "small_cnn"
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
