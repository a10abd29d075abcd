"""Intermediate tensors of a model on calibration inputs, for the passes that learn from them.

Bias correction (:mod:`edgec.passes.bias_correction`) needs per-channel means of layer
outputs, AdaRound (:mod:`edgec.passes.adaround`) a layer's input and its FP32 target. Both run
the model on ONNX Runtime with graph optimisation off (a Q/DQ model then runs its reference
arithmetic: float ops on dequantized values, not this machine's integer kernels, which saturate
on x86 without VNNI and differ between machines), and only the part of the graph the tensors
they read need (measuring layer *k* runs the graph up to layer *k*, not all of it).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import numpy as np
import onnx
from onnx import TensorProto, helper


def initializers(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    """The model's initializers by name."""
    return {init.name: init for init in model.graph.initializer}


def producers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    """The node producing each tensor, by tensor name."""
    return {out: node for node in model.graph.node for out in node.output}


def _read_by(nodes) -> set[str]:
    """Tensor names ``nodes`` read, in their subgraphs (If, Loop) too."""
    names = set()
    for node in nodes:
        names.update(node.input)
        for attribute in node.attribute:
            for graph in [attribute.g, *attribute.graphs]:
                names |= _read_by(graph.node)
    return names


def up_to(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """A copy of ``model`` whose outputs are ``names`` and whose nodes and initializers are
    only those they need (nodes in their original order; no value_info)."""
    result = onnx.ModelProto()
    result.CopyFrom(model)
    graph = result.graph
    # By index: protobuf does not promise one Python object per element across iterations.
    producer = {out: i for i, node in enumerate(graph.node) for out in node.output}
    needed: set[int] = set()
    stack = list(names)
    while stack:
        index = producer.get(stack.pop())
        if index is not None and index not in needed:
            needed.add(index)
            stack.extend(name for name in graph.node[index].input if name)
    kept = []
    for index in sorted(needed):
        kept.append(onnx.NodeProto())
        kept[-1].CopyFrom(graph.node[index])
    del graph.node[:]
    graph.node.extend(kept)
    # Only what those nodes read: a smaller session to build, and a copy whose bytes depend
    # only on the part of the graph that computes ``names`` (see :func:`digest`).
    used = _read_by(kept)
    dropped = {init.name for init in graph.initializer if init.name not in used}
    inits = [init for init in graph.initializer if init.name not in dropped]
    del graph.initializer[:]
    graph.initializer.extend(inits)
    inputs = [value for value in graph.input if value.name not in dropped]  # old IR lists them
    del graph.input[:]
    graph.input.extend(inputs)
    del graph.value_info[:]
    del graph.output[:]
    graph.output.extend(helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in names)
    return result


def digest(model: onnx.ModelProto, names: list[str], samples: np.ndarray) -> str:
    """A key for ``names``' values on ``samples``: the same for two models whose graphs agree
    up to those tensors, however they differ after them."""
    h = hashlib.sha256(up_to(model, names).SerializeToString())
    h.update(np.ascontiguousarray(samples).tobytes())
    return h.hexdigest()


def _input(model: onnx.ModelProto) -> tuple[str, int]:
    """The model's one real input's name and its static batch size (1 when dynamic)."""
    inits = initializers(model)
    value = next(i for i in model.graph.input if i.name not in inits)
    first = value.type.tensor_type.shape.dim[0]
    batch = first.dim_value if first.HasField("dim_value") and first.dim_value > 0 else 1
    return value.name, batch


def tensor_batches(
    model: onnx.ModelProto, names: list[str], samples: np.ndarray
) -> Iterator[list[np.ndarray]]:
    """``names``' values, one batch of ``samples`` at a time (the model's static batch size;
    a dynamic batch runs one sample at a time; a last partial batch is dropped), graph
    optimisation off, only the part of the graph they need run."""
    import onnxruntime as ort

    exposed = up_to(model, names)
    # Not the runtime's session options (passes import no runtime, and this session is not
    # timed or shipped): only quiet logs and no optimisation.
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(
        exposed.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    input_name, batch = _input(model)
    for start in range(0, len(samples) // batch * batch, batch):
        feed = {input_name: np.ascontiguousarray(samples[start : start + batch])}
        yield session.run(names, feed)
