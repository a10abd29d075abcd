"""Cross-layer equalization: even out per-channel weight ranges of consecutive Convs, exactly.

Nagel et al. 2019, "Data-Free Quantization Through Weight Equalization and Bias Correction".
For a chain ``Conv1 -> f -> Conv2`` where ``f`` commutes with a positive per-channel scale
(``f(x / s) = f(x) / s`` for ``s > 0``), dividing Conv1's output channel ``i`` by ``s_i`` and
multiplying every Conv2 weight that reads input channel ``i`` by ``s_i`` leaves the output of
Conv2 unchanged:

* ``W1[i] /= s_i`` and ``b1[i] /= s_i`` (the output channel of Conv1; any ``group``: an output
  channel is linear in its own weights and bias);
* ``W2[o, i] *= s_i`` for every output ``o`` that reads channel ``i`` (a dense Conv2: column
  ``i``; a depthwise Conv2, ``group == channels``: the rows ``i*m .. i*m+m-1`` that channel
  ``i`` feeds, ``m`` the channel multiplier).

With ``r1_i = max|W1[i]|`` (the range of Conv1's output channel ``i``) and ``r2_i = max|W2[:, i]|``
(the range of Conv2's input channel ``i``), the paper's choice ``s_i = sqrt(r1_i * r2_i) / r2_i``
makes both ranges ``sqrt(r1_i * r2_i)``: a channel that was much narrower than its tensor's
widest channel (per-tensor INT8 would give it few levels) borrows range from its partner. A
channel with a zero range on either side keeps ``s_i = 1``. Conv2 can be Conv1 of the next pair,
so the pass sweeps over all pairs until the scales settle (at most :data:`MAX_ROUNDS` sweeps,
or until every scale of a sweep is within :data:`SETTLED` of 1).

``f`` may be ``Relu``, ``LeakyRelu`` (both positively homogeneous), ``Clip`` with ``min = 0``
and no upper bound, or nothing (Conv1 feeds Conv2 directly).

Refused (the pair is left alone, the reason is logged at ``debug``):

* ``Clip`` with an upper bound, which includes ReLU6 (``Clip(0, 6)``): ``min(y / s, 6)`` is not
  ``min(y, 6) / s`` for any ``s != 1`` (the clip point moves to ``6 * s``), so no scale keeps
  FP32 outputs exact. The paper replaces ReLU6 by ReLU; ``relu6_as_relu=True`` does that
  (for ``Clip`` with ``min = 0`` and a finite max, only in pairs that get equalized, logged at
  ``info``): the FP32 model then changes wherever an activation exceeded the bound, so the
  result is to be judged against the original FP32 model (the accuracy guard does). ``Clip``
  with ``min != 0`` is refused for the same reason;
* Conv1's output (or ``f``'s) has another consumer or is a graph output: the scale would
  reach that consumer too;
* a weight or bias is not a constant initializer, is a graph input (a user could feed another
  value at run time), or is shared with another node (rewriting it would change that node);
* Conv2 is grouped but not depthwise (kept simple: MobileNet-style models have only dense and
  depthwise convs), or its weight shape does not match Conv1's channel count;
* a Conv in a non-default domain, or one whose weight is not floating point.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from edgec.passes._rewrite import constant

logger = logging.getLogger(__name__)

#: Most sweeps over all pairs (each sweep equalizes every pair once).
MAX_ROUNDS = 20
#: A sweep whose scales are all within this of 1 ends the iteration.
SETTLED = 1e-3
# Activations f with f(x / s) = f(x) / s for s > 0.
_HOMOGENEOUS = ("Relu", "LeakyRelu")


@dataclass
class _Pair:
    """One equalizable ``Conv1 -> f -> Conv2`` chain."""

    conv1: ir.Node
    conv2: ir.Node
    depthwise2: bool
    unclip: ir.Node | None = None  # a ReLU6-style Clip to become Relu (relu6_as_relu)


def _is_default_domain(node: ir.Node) -> bool:
    return node.domain in ("", "ai.onnx")


def _group(node: ir.Node) -> int:
    attr = node.attributes.get("group")
    return 1 if attr is None else attr.as_int()


def _parameter_reason(node: ir.Node, index: int, what: str) -> str | None:
    """Why input ``index`` of ``node`` cannot be rewritten in place, or ``None``."""
    value = node.inputs[index] if len(node.inputs) > index else None
    if value is None:
        return None if index == 2 else f"it has no {what}"
    if value.is_graph_input():
        return f"its {what} '{value.name}' is a graph input"
    graph = node.graph
    if value.const_value is None or graph is None or value.name not in graph.initializers:
        return f"its {what} '{value.name}' is not a constant initializer"
    if len(value.uses()) > 1:
        return f"its {what} '{value.name}' is shared with another node"
    if value.const_value.dtype not in (ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.DOUBLE):
        return f"its {what} is not floating point"
    return None


def _only_consumer(value: ir.Value) -> ir.Node | None:
    """The single node that reads ``value``, or ``None`` (several, none, or a graph output)."""
    users = {user for user, _ in value.uses()}
    if len(users) != 1 or len(value.uses()) != 1 or value.is_graph_output():
        return None
    return next(iter(users))


def _clip_bounds(node: ir.Node) -> tuple[np.ndarray | None, np.ndarray | None, str | None]:
    """A Clip's constant ``(min, max)`` (``None`` when absent), or a reason they are unknown."""
    low = high = None
    if len(node.inputs) > 1 and node.inputs[1] is not None:  # opset >= 11: inputs
        low = constant(node.inputs[1])
        if low is None:
            return None, None, "Clip's min is not a constant"
    if len(node.inputs) > 2 and node.inputs[2] is not None:
        high = constant(node.inputs[2])
        if high is None:
            return None, None, "Clip's max is not a constant"
    if (attr := node.attributes.get("min")) is not None:  # opset < 11: attributes
        low = np.asarray(attr.as_float())
    if (attr := node.attributes.get("max")) is not None:
        high = np.asarray(attr.as_float())
    return low, high, None


def _is_relu6_like(node: ir.Node) -> bool:
    """A Clip with min 0 and a finite max (ReLU6 and its kin)."""
    low, high, reason = _clip_bounds(node)
    return (
        node.op_type == "Clip"
        and _is_default_domain(node)
        and reason is None
        and low is not None
        and float(np.max(low)) == 0.0
        and high is not None
        and bool(np.isfinite(high).all())
    )


def _activation_reason(node: ir.Node) -> str | None:
    """Why ``node`` between the convs does not commute with positive scales, or ``None``."""
    if not _is_default_domain(node):
        return f"{node.op_type} in domain '{node.domain}' between the convs"
    if node.op_type in _HOMOGENEOUS:
        return None
    if node.op_type != "Clip":
        return f"{node.op_type} between the convs does not commute with channel scales"
    low, high, reason = _clip_bounds(node)
    if reason:
        return reason
    if high is not None and np.isfinite(high).all():
        return (
            f"Clip with max {float(np.max(high)):g} (ReLU6-style) does not commute with "
            "channel scales: the clip point would move"
        )
    if low is None or float(np.max(low)) != 0.0:
        return "Clip with min other than 0 does not commute with channel scales"
    return None


def _pair_from(conv1: ir.Node, relu6_as_relu: bool) -> tuple[_Pair | None, str | None]:
    """The pair starting at ``conv1``; ``(None, reason)`` when refused, ``(None, None)`` when
    ``conv1`` feeds no Conv at all (nothing worth logging)."""
    unclip = None
    out = conv1.outputs[0]
    between = _only_consumer(out)
    conv2 = between
    if between is not None and between.op_type != "Conv":
        if between.op_type not in (*_HOMOGENEOUS, "Clip"):
            return None, None
        conv2 = _only_consumer(between.outputs[0])
        if conv2 is None or conv2.op_type != "Conv":
            return None, None
        if relu6_as_relu and _is_relu6_like(between):
            unclip = between
        elif reason := _activation_reason(between):
            return None, reason
    if conv2 is None:
        if any(user.op_type == "Conv" for user, _ in out.uses()):
            return None, "its output has other consumers or is a graph output"
        return None, None
    if not _is_default_domain(conv2):
        return None, f"the next Conv '{conv2.name}' is in domain '{conv2.domain}'"
    if conv2.inputs[0] is not (between.outputs[0] if between is not conv2 else out):
        return None, f"it feeds '{conv2.name}' as a weight, not as data"
    for node, index, what in (
        (conv1, 1, "weight"),
        (conv1, 2, "bias"),
        (conv2, 1, "weight of the next Conv"),
    ):
        if reason := _parameter_reason(node, index, what):
            return None, reason
    w1 = conv1.inputs[1].const_value.numpy().astype(np.float64)
    w2 = conv2.inputs[1].const_value.numpy().astype(np.float64)
    bias = conv1.inputs[2] if len(conv1.inputs) > 2 else None
    b1 = None if bias is None else bias.const_value.numpy().astype(np.float64)
    channels, group2 = w1.shape[0], _group(conv2)
    depthwise2 = group2 > 1
    if depthwise2 and not (group2 == channels and w2.shape[1] == 1 and w2.shape[0] % channels == 0):
        return None, f"the next Conv '{conv2.name}' is grouped (group={group2}) but not depthwise"
    if not depthwise2 and w2.shape[1] != channels:
        return None, f"the next Conv '{conv2.name}' reads {w2.shape[1]} channels, not {channels}"
    if b1 is not None and b1.shape != (channels,):
        return None, "its bias does not have one value per output channel"
    return _Pair(conv1, conv2, depthwise2, unclip), None


def _input_ranges(w2: np.ndarray, channels: int, depthwise: bool) -> np.ndarray:
    """``r2_i``: the largest |weight| of Conv2 that reads input channel ``i``."""
    w2 = np.abs(w2)
    if depthwise:
        return w2.reshape(channels, -1).max(axis=1)
    return w2.swapaxes(0, 1).reshape(channels, -1).max(axis=1)


def _output_ranges(w1: np.ndarray) -> np.ndarray:
    """``r1_i``: the largest |weight| of Conv1's output channel ``i``."""
    return np.abs(w1).reshape(w1.shape[0], -1).max(axis=1)


def equalize_scales(r1: np.ndarray, r2: np.ndarray) -> np.ndarray:
    """``s_i = sqrt(r1_i * r2_i) / r2_i``; 1 where either range is 0 (or not finite)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        s = np.sqrt(r1 * r2) / r2
    return np.where((r1 > 0) & (r2 > 0) & np.isfinite(s), s, 1.0)


def _scale_inputs(w2: np.ndarray, s: np.ndarray, depthwise: bool) -> np.ndarray:
    """``w2`` with every weight that reads input channel ``i`` multiplied by ``s_i``."""
    if depthwise:
        per_row = np.repeat(s, w2.shape[0] // len(s))
        return w2 * per_row.reshape((-1,) + (1,) * (w2.ndim - 1))
    return w2 * s.reshape((1, -1) + (1,) * (w2.ndim - 2))


def _store(value: ir.Value, array: np.ndarray) -> None:
    dtype = value.const_value.dtype.numpy()
    value.const_value = ir.tensor(array.astype(dtype), name=value.name)


class EqualizeCrossLayerPass(ir.passes.InPlacePass):
    """Equalize the weight ranges of every ``Conv -> Relu/Clip(0, inf)/nothing -> Conv`` pair.

    The math and the refusals are in the module docstring. ``modified`` is true exactly when a
    weight changed (a scale other than 1 was applied); one line at ``info`` says how many pairs
    were equalized (and how many ReLU6 became ReLU), and nothing is logged when none was.

    Attributes:
        relu6_as_relu: Replace a ReLU6-style Clip between an equalized pair by Relu (the
            paper's recipe; changes FP32 outputs where activations exceeded the bound).
    """

    def __init__(self, relu6_as_relu: bool = False):
        super().__init__()
        self.relu6_as_relu = relu6_as_relu

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        """Find the pairs, sweep until the scales settle, write the weights back."""
        pairs: list[_Pair] = []
        for node in model.graph:
            if node.op_type != "Conv" or not _is_default_domain(node):
                continue
            pair, reason = _pair_from(node, self.relu6_as_relu)
            if reason:
                logger.debug("Conv '%s' not equalized: %s", node.name or "?", reason)
            if pair is not None:
                pairs.append(pair)
        # Weights by node (a Conv can be Conv2 of one pair and Conv1 of the next), in float64.
        weights = {
            id(n): n.inputs[1].const_value.numpy().astype(np.float64)
            for p in pairs
            for n in (p.conv1, p.conv2)
        }
        biases = {
            id(p.conv1): p.conv1.inputs[2].const_value.numpy().astype(np.float64)
            for p in pairs
            if len(p.conv1.inputs) > 2 and p.conv1.inputs[2] is not None
        }
        changed: set[int] = set()
        touched: dict[int, ir.Node] = {}
        for _ in range(MAX_ROUNDS):
            worst = 0.0
            for index, pair in enumerate(pairs):
                w1, w2 = weights[id(pair.conv1)], weights[id(pair.conv2)]
                r2 = _input_ranges(w2, w1.shape[0], pair.depthwise2)
                s = equalize_scales(_output_ranges(w1), r2)
                if np.all(s == 1.0):
                    continue
                weights[id(pair.conv1)] = w1 / s.reshape((-1,) + (1,) * (w1.ndim - 1))
                if id(pair.conv1) in biases:
                    biases[id(pair.conv1)] = biases[id(pair.conv1)] / s
                weights[id(pair.conv2)] = _scale_inputs(w2, s, pair.depthwise2)
                changed.add(index)
                touched[id(pair.conv1)] = pair.conv1
                touched[id(pair.conv2)] = pair.conv2
                worst = max(worst, float(np.max(np.abs(np.log(s)))))
            if worst < np.log1p(SETTLED):
                break
        for key, node in touched.items():
            _store(node.inputs[1], weights[key])
            if key in biases:
                _store(node.inputs[2], biases[key])
        unclipped = [pairs[i].unclip for i in sorted(changed) if pairs[i].unclip is not None]
        for clip in unclipped:
            relu = ir.Node("", "Relu", inputs=[clip.inputs[0]], name=clip.name)
            relu.outputs[0].name = clip.outputs[0].name
            relu.outputs[0].shape, relu.outputs[0].type = (
                clip.outputs[0].shape,
                clip.outputs[0].type,
            )
            ir.convenience.replace_nodes_and_values(
                clip.graph, clip, [clip], [relu], [clip.outputs[0]], [relu.outputs[0]]
            )
        if changed:
            logger.info(
                "EqualizeCrossLayerPass: equalized %d Conv pairs (%d found)%s",
                len(changed),
                len(pairs),
                f", {len(unclipped)} ReLU6 replaced by ReLU" if unclipped else "",
            )
        return ir.passes.PassResult(model, modified=bool(changed))
