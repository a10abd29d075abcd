"""Run quantized HardSigmoid (and so HardSwish and squeeze-excitation gates) in integer.

ONNX Runtime has no integer HardSigmoid: in a Q/DQ model each one runs as dequantize, float
HardSigmoid, quantize — and ``quant_pre_process`` splits every HardSwish into
``x * HardSigmoid(x)``, so a MobileNetV3 has dozens of them. :func:`fold_hard_sigmoid`
rewrites each into arithmetic ORT fuses into its QLinear kernels (details in its docstring).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import onnx


class _Graph:
    """Producer, consumer and initializer look-ups over a graph that is being rewritten."""

    def __init__(self, model: onnx.ModelProto):
        self.graph = model.graph
        self.inits = {init.name: init for init in self.graph.initializer}
        self.outputs = {value.name for value in self.graph.output}
        self.producer = {o: n for n in self.graph.node for o in n.output}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in self.graph.node:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)

    def only_consumer(self, tensor: str, op_type: str) -> onnx.NodeProto | None:
        """The single ``op_type`` node reading ``tensor`` (not a graph output), else ``None``."""
        users = self.consumers.get(tensor, [])
        if tensor in self.outputs or len(users) != 1 or users[0].op_type != op_type:
            return None
        return users[0]

    def scalar(self, name: str) -> np.ndarray | None:
        """An initializer with one element, else ``None``."""
        init = self.inits.get(name)
        if init is None:
            return None
        value = onnx.numpy_helper.to_array(init)
        return value if value.size == 1 else None

    def add_initializer(self, name: str, value: np.ndarray) -> str:
        self.graph.initializer.append(onnx.numpy_helper.from_array(value, name))
        return name

    def drop_unused_initializers(self, names: Iterable[str]) -> None:
        used = {i for n in self.graph.node for i in n.input}
        for name in set(names) - used:
            init = self.inits.pop(name, None)
            if init is not None:
                self.graph.initializer.remove(init)


def _integer_zero_point(q: np.ndarray | None) -> bool:
    return q is not None and q.dtype in (np.uint8, np.int8)


def fold_hard_sigmoid(model: onnx.ModelProto) -> int:
    """Rewrite each quantized HardSigmoid into integer ops ONNX Runtime fuses, in place.

    ``HardSigmoid(x) = clip(alpha x + beta, 0, 1) = alpha clip(x + beta / alpha, 0, 1 / alpha)``.
    For ``DequantizeLinear -> HardSigmoid -> QuantizeLinear`` (per-tensor parameters, integer
    zero points, ``alpha > 0``) the HardSigmoid becomes ``Add(x, beta / alpha)`` (the shift a
    dequantized constant, so ORT runs it as ``QLinearAdd``); its QuantizeLinear covers exactly
    ``[0, 1 / alpha]`` with the type's full range, so saturation is the clip; and the
    DequantizeLinear after it scales by ``alpha``: the result is HardSigmoid on a fixed grid of
    255 steps over its whole output range ``[0, 1]`` (instead of the calibrated range). When
    ``x`` is a Conv output used by nothing else, the shift goes into the Conv's int32 bias
    instead, and the Add and ``x``'s own Q/DQ pair disappear. The Add keeps the node's name;
    the tensor QuantizeLinear reads is renamed ``<HardSigmoid output>_shifted``, so nothing
    mistakes the shifted values for the HardSigmoid's (the accuracy guard's ranking skips it).

    Returns:
        How many HardSigmoid nodes were rewritten.
    """
    count = 0
    while True:
        index = _Graph(model)
        node = next((n for n in model.graph.node if _foldable(index, n)), None)
        if node is None:
            return count
        _fold(index, node)
        count += 1


def _hard_sigmoid_attributes(node: onnx.NodeProto) -> tuple[float, float]:
    values = {a.name: a.f for a in node.attribute}
    return values.get("alpha", 0.2), values.get("beta", 0.5)


def _foldable(index: _Graph, node: onnx.NodeProto) -> bool:
    if node.op_type != "HardSigmoid":
        return False
    alpha, beta = _hard_sigmoid_attributes(node)
    dq_x = index.producer.get(node.input[0])
    q_y = index.only_consumer(node.output[0], "QuantizeLinear")
    if alpha <= 0 or beta == 0 or dq_x is None or dq_x.op_type != "DequantizeLinear":
        return False
    if q_y is None or len(q_y.input) < 3 or len(dq_x.input) < 3 or q_y.output[0] in index.outputs:
        return False
    y_dqs = index.consumers.get(q_y.output[0], [])
    return (
        bool(y_dqs)
        and all(d.op_type == "DequantizeLinear" and len(d.input) == 3 for d in y_dqs)
        and index.scalar(dq_x.input[1]) is not None
        and index.scalar(q_y.input[1]) is not None
        and _integer_zero_point(index.scalar(dq_x.input[2]))
        and _integer_zero_point(index.scalar(q_y.input[2]))
    )


def _fold(index: _Graph, node: onnx.NodeProto) -> None:
    alpha, beta = _hard_sigmoid_attributes(node)
    shift = beta / alpha
    dq_x = index.producer[node.input[0]]
    q_y = index.consumers[node.output[0]][0]
    y_dqs = index.consumers[q_y.output[0]]
    y_type = index.scalar(q_y.input[2]).dtype
    low, high = np.iinfo(y_type).min, np.iinfo(y_type).max
    stale = [q_y.input[1], q_y.input[2], *(i for d in y_dqs for i in d.input[1:])]
    base = node.name
    shifted = f"{node.output[0]}_shifted"
    # [0, 1/alpha] on the type's whole range: QuantizeLinear's saturation is the clip.
    q_y.input[1] = index.add_initializer(
        f"{base}_shifted_scale", np.array(1.0 / (alpha * (high - low)), np.float32)
    )
    q_y.input[2] = index.add_initializer(f"{base}_shifted_zero_point", np.array(low, y_type))
    y_scale = index.add_initializer(f"{base}_y_scale", np.array(1.0 / (high - low), np.float32))
    for dq in y_dqs:
        dq.input[1] = y_scale
        dq.input[2] = q_y.input[2]
    if _fold_into_bias(index, dq_x, node, shift, q_y):
        index.drop_unused_initializers(stale)
        return
    x_type = index.scalar(dq_x.input[2]).dtype
    info = np.iinfo(x_type)
    # The shift exactly representable: at one end of its type's range.
    zero = 0 if shift > 0 or info.min < 0 else info.max
    level = info.max if shift > 0 else info.min
    names = [
        index.add_initializer(f"{base}_shift_quantized", np.array(level, x_type)),
        index.add_initializer(
            f"{base}_shift_scale", np.array(shift / (int(level) - zero), np.float32)
        ),
        index.add_initializer(f"{base}_shift_zero_point", np.array(zero, x_type)),
    ]
    dq_shift = onnx.helper.make_node(
        "DequantizeLinear", names, [f"{base}_shift"], name=f"{base}_shift_DequantizeLinear"
    )
    add = onnx.helper.make_node("Add", [node.input[0], f"{base}_shift"], [shifted], name=base)
    nodes = index.graph.node
    position = list(nodes).index(node)
    nodes.remove(node)
    nodes.insert(position, add)
    nodes.insert(position, dq_shift)
    q_y.input[0] = shifted
    index.drop_unused_initializers(stale)


def _fold_into_bias(
    index: _Graph,
    dq_x: onnx.NodeProto,
    node: onnx.NodeProto,
    shift: float,
    q_y: onnx.NodeProto,
) -> bool:
    """Add ``shift`` to the bias of the Conv whose output only this HardSigmoid reads.

    ``Conv -> Q -> DQ -> HardSigmoid -> Q_y`` becomes ``Conv (bias + shift) -> Q_y``; returns
    whether it did (``False``: nothing changed).
    """
    q_x = index.producer.get(dq_x.input[0])
    if q_x is None or q_x.op_type != "QuantizeLinear":
        return False
    conv = index.producer.get(q_x.input[0])
    if (
        conv is None
        or conv.op_type != "Conv"
        or index.only_consumer(dq_x.output[0], "HardSigmoid") is not node
        or index.only_consumer(q_x.output[0], "DequantizeLinear") is not dq_x
        or index.only_consumer(conv.output[0], "QuantizeLinear") is not q_x
    ):
        return False
    dq_in, dq_w = index.producer.get(conv.input[0]), index.producer.get(conv.input[1])
    if not (dq_in and dq_w and dq_in.op_type == dq_w.op_type == "DequantizeLinear"):
        return False
    weight, w_scale = index.inits.get(dq_w.input[0]), index.inits.get(dq_w.input[1])
    x_scale = index.scalar(dq_in.input[1])
    if weight is None or w_scale is None or x_scale is None:
        return False
    channels = weight.dims[0]
    has_bias = len(conv.input) > 2 and conv.input[2]
    dq_b = index.producer.get(conv.input[2]) if has_bias else None
    if has_bias:
        # quantize_static gives a quantized Conv an int32 bias with scale x_scale * w_scale.
        if dq_b is None or dq_b.op_type != "DequantizeLinear":
            return False
        bias = index.inits.get(dq_b.input[0])
        b_scale = index.inits.get(dq_b.input[1])
        if bias is None or b_scale is None or len(index.consumers[dq_b.input[0]]) != 1:
            return False
        scale = onnx.numpy_helper.to_array(b_scale).astype(np.float64)
        values = onnx.numpy_helper.to_array(bias).astype(np.int64)
    else:
        w = onnx.numpy_helper.to_array(w_scale).astype(np.float32)
        scale = np.broadcast_to(np.float32(x_scale) * w, (channels,)).astype(np.float32)
        values = np.zeros(channels, np.int64)
    shifted = values + np.rint(shift / scale.astype(np.float64)).astype(np.int64)
    if np.abs(shifted).max() >= 2**31:
        return False
    if has_bias:
        bias.CopyFrom(onnx.numpy_helper.from_array(shifted.astype(np.int32), bias.name))
    else:
        base = f"{conv.name}_folded_bias"
        inputs = [
            index.add_initializer(f"{base}_quantized", shifted.astype(np.int32)),
            index.add_initializer(f"{base}_scale", scale),
        ]
        index.graph.node.insert(
            list(index.graph.node).index(conv),
            onnx.helper.make_node("DequantizeLinear", inputs, [base], name=base, axis=0),
        )
        conv.input.append(base)
    conv.output[0] = q_y.input[0] = f"{node.output[0]}_shifted"
    stale = [*q_x.input[1:], *dq_x.input[1:]]
    for dead in (q_x, dq_x, node):
        index.graph.node.remove(dead)
    index.drop_unused_initializers(stale)
    return True
