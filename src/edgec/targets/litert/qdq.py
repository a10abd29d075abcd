"""The float graph inside a Q/DQ ONNX model, and the quantization its Q/DQ pairs asked for.

edgec's INT8 path (:mod:`edgec.compiler.int8`) ships a Q/DQ ONNX model the accuracy guard
approved. The LiteRT converter does not re-quantize it: it takes that model apart here into

* the float graph (every ``DequantizeLinear(QuantizeLinear(x))`` read as ``x``, every
  dequantized initializer as its float value),
* the activation quantization of each tensor (the QuantizeLinear's scale and zero point),
* the integer weights and their scales (so the ``.tflite`` holds the same int8 weights),

and writes a full-integer TFLite from them. A Q -> DQ pair whose parameters differ (the
HardSigmoid fold of :mod:`edgec.passes.qdq_hard_sigmoid` saturates on one grid and reads on
another) becomes a ``Rescale`` node: clip to the Q grid, then multiply by the ratio of scales.
Tensors without a Q/DQ pair (layers the accuracy guard kept in FP32) stay float.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgec.targets.litert.flatbuffer import Quant


@dataclass
class FloatView:
    """A Q/DQ model read as a float graph plus quantization.

    Attributes:
        graph: The float graph's nodes (topological order).
        consts: Constant tensors by name (initializers and dequantized weights), float.
        quant: Activation quantization by tensor name.
        int_weights: Integer weights by (dequantized) tensor name: values and quantization.
        inputs: Graph input names.
        outputs: Graph output names (renamed through removed Q/DQ pairs).
        output_alias: Float graph output name -> the ONNX model's output name.
    """

    graph: list[onnx.NodeProto]
    consts: dict[str, np.ndarray]
    quant: dict[str, Quant] = field(default_factory=dict)
    int_weights: dict[str, tuple[np.ndarray, Quant]] = field(default_factory=dict)
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    output_alias: dict[str, str] = field(default_factory=dict)

    @property
    def quantized(self) -> bool:
        """Whether the model had any Q/DQ pair."""
        return bool(self.quant)


def _params(node: onnx.NodeProto, consts: dict[str, np.ndarray]) -> tuple[Quant, np.dtype]:
    scale = consts[node.input[1]]
    zp = consts[node.input[2]] if len(node.input) > 2 and node.input[2] else np.zeros((), np.uint8)
    axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
    return Quant.of(scale, zp, axis if np.size(scale) > 1 else 0), zp.dtype


def _as_int8(quant: Quant, dtype: np.dtype) -> Quant:
    """uint8 parameters as int8 ones (same grid, zero point - 128)."""
    return quant.shifted(-128) if dtype == np.uint8 else quant


def float_view(model: onnx.ModelProto) -> FloatView:
    """Take a (Q/DQ or float) ONNX model apart; a float model comes back unchanged."""
    graph = model.graph
    consts = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for node in graph.node:  # Constant nodes are constants too
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            consts[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    producer = {o: n for n in graph.node for o in n.output}
    alias: dict[str, str] = {}
    view = FloatView([], consts, inputs=[i.name for i in graph.input if i.name not in consts])

    def real(name: str) -> str:
        while name in alias:
            name = alias[name]
        return name

    for node in graph.node:
        if node.op_type == "Constant":
            continue
        if node.op_type == "QuantizeLinear":
            quant, dtype = _params(node, consts)
            view.quant.setdefault(real(node.input[0]), _as_int8(quant, dtype))
            continue  # read through by the DequantizeLinear after it
        if node.op_type == "DequantizeLinear":
            source = node.input[0]
            quant, dtype = _params(node, consts)
            if source in consts:  # a quantized weight or bias
                q = consts[source].astype(np.int64)
                scale = np.asarray(consts[node.input[1]], np.float64)
                zp = np.asarray(quant.zero_point, np.int64)
                if scale.size > 1:
                    shape = [1] * q.ndim
                    shape[quant.axis] = -1
                    scale, zp = scale.reshape(shape), zp.reshape(shape)
                consts[node.output[0]] = ((q - zp) * scale).astype(np.float32)
                if consts[source].dtype in (np.int8, np.uint8):
                    view.int_weights[node.output[0]] = (consts[source], _as_int8(quant, dtype))
                continue
            q_node = producer.get(source)
            if q_node is None or q_node.op_type != "QuantizeLinear":
                raise ValueError(f"DequantizeLinear {node.name} reads {source}, not a Q node")
            x = real(q_node.input[0])
            q_quant, _ = _params(q_node, consts)
            if q_quant == quant:
                alias[node.output[0]] = x
            else:  # saturate on the Q grid, read on the DQ grid
                view.quant[node.output[0]] = _as_int8(quant, dtype)
                view.graph.append(
                    helper.make_node("Rescale", [x], [node.output[0]], name=f"{node.name}_rescale")
                )
            continue
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        del copy.input[:]
        copy.input.extend(real(i) if i else "" for i in node.input)
        view.graph.append(copy)
    for out in graph.output:
        view.outputs.append(real(out.name))
        view.output_alias[real(out.name)] = out.name
    return view


def rescale_bounds(quant_in: Quant) -> tuple[float, float]:
    """The real interval an int8 grid covers (what a ``Rescale`` clips to)."""
    s, z = quant_in.scale[0], quant_in.zero_point[0]
    return s * (-128 - z), s * (127 - z)
