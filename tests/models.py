"""Real models for tests: the light architectures shipped in the onnx wheel, with random weights.

The light models' weights are ``ConstantOfShape`` nodes filled with 0.02, so their outputs are
degenerate; :func:`randomized_light_model` replaces every such weight with a random initializer
of the same shape (scaled like He initialisation so activations neither vanish nor explode).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

LIGHT_DIR = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
LIGHT_MODELS = sorted(p.stem.removeprefix("light_") for p in LIGHT_DIR.glob("light_*.onnx"))


def randomized_light_model(name: str, seed: int = 0) -> onnx.ModelProto:
    """The light model ``name`` with its ConstantOfShape weights replaced by random values."""
    model = onnx.load(LIGHT_DIR / f"light_{name}.onnx")
    rng = np.random.default_rng(seed)
    graph = model.graph
    # BatchNormalization inputs 1 (scale) and 4 (variance) must be positive to stay sane.
    bn_positive = {
        n.input[i] for n in graph.node if n.op_type == "BatchNormalization" for i in (1, 4)
    }
    kept = []
    for node in graph.node:
        if node.op_type == "ConstantOfShape" and node.input and _shape_of(graph, node.input[0]):
            shape = _shape_of(graph, node.input[0])
            fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else int(shape[0])
            scale = float(np.sqrt(2.0 / max(fan_in, 1)))
            # float32 draws: vgg19's 100M-element weights take seconds, not tens of seconds.
            values = rng.standard_normal(shape, dtype=np.float32) * np.float32(scale)
            if len(shape) == 1:  # biases and BN parameters
                positive = node.output[0] in bn_positive  # BN scale and variance
                values = np.abs(values) + 0.5 if positive else values * 0.1
                values = values.astype(np.float32)
            graph.initializer.append(numpy_helper.from_array(values, node.output[0]))
            if model.ir_version < 4:  # IR 3 requires every initializer to be a graph input
                graph.input.append(
                    helper.make_tensor_value_info(node.output[0], TensorProto.FLOAT, list(shape))
                )
        else:
            kept.append(node)
    del graph.node[:]
    graph.node.extend(kept)
    # The weights' shape tensors are now unused: drop them (and their graph-input entries).
    used = {name for node in graph.node for name in node.input}
    # Delete in place: re-adding the kept initializers would copy hundreds of MB (vgg19).
    for index in reversed(range(len(graph.initializer))):
        if graph.initializer[index].name not in used:
            del graph.initializer[index]
    inits = {i.name for i in graph.initializer}
    keep_inputs = [i for i in graph.input if i.name in used or i.name not in inits]
    keep_inputs = [i for i in keep_inputs if i.name in used]
    del graph.input[:]
    graph.input.extend(keep_inputs)
    return model


def _shape_of(graph: onnx.GraphProto, name: str) -> list[int] | None:
    for init in graph.initializer:
        if init.name == name:
            return [int(v) for v in numpy_helper.to_array(init)]
    for node in graph.node:
        if node.op_type == "Constant" and node.output[0] == name:
            return [int(v) for v in numpy_helper.to_array(node.attribute[0].t)]
    return None


def bottleneck_model(width: int = 64, depth: int = 4) -> onnx.ModelProto:
    """A cheap stride-4 stem (3 -> 8 channels) that shrinks the input 24x in bytes, then
    ``depth`` heavy ``width``-channel 3x3 convolutions at 56x56: the shape device/gateway
    partitioning exploits."""
    rng = np.random.default_rng(0)

    def weight(name, *shape):
        return numpy_helper.from_array(rng.standard_normal(shape).astype("f4") * 0.1, name)

    inits = [weight("stem", 8, 3, 4, 4), weight("fc", 10, width)]
    nodes = [helper.make_node("Conv", ["x", "stem"], ["s"], strides=[4, 4])]
    prev, channels = "s", 8
    for i in range(depth):
        inits.append(weight(f"w{i}", width, channels, 3, 3))
        nodes += [
            helper.make_node("Conv", [prev, f"w{i}"], [f"c{i}"], pads=[1] * 4),
            helper.make_node("Relu", [f"c{i}"], [f"r{i}"]),
        ]
        prev, channels = f"r{i}", width
    nodes += [
        helper.make_node("GlobalAveragePool", [prev], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "fc"], ["logits"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "bottleneck",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 224, 224])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return onnx.shape_inference.infer_shapes(model)


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
