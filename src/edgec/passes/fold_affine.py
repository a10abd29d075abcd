"""Fold per-channel ``Mul``/``Add`` by constants into a preceding Conv, and merge such chains.

Caffe2 exports follow every BatchNormalization with a separate scale layer (``Mul`` then
``Add`` by per-channel constants: densenet121, inception_v2), and a BatchNormalization with no
Conv before it becomes ``Mul`` + ``Add`` (:mod:`edgec.passes.fold_batchnorm`). This pass
removes those elementwise layers:

* ``Mul(Conv(x, W, B), s)`` -> ``Conv(x, W * s, B * s)`` and ``Add(Conv(x, W, B), t)`` ->
  ``Conv(x, W, B + t)``, where ``s``/``t`` broadcast over the output-channel axis only (shape
  ``[C, 1, 1]``, ``[1, C, 1, 1]``, ``[C]`` against a 2-D output, or a scalar). Scaling the
  output channels of ``W`` is exact for any group count; zero padding is unaffected because the
  map acts on the Conv's output, not its input.
* ``Mul(Mul(x, a), b)`` -> ``Mul(x, a * b)``, ``Add(Add(x, a), b)`` -> ``Add(x, a + b)`` and
  ``Mul(Add(x, a), b)`` -> ``Add(Mul(x, b), a * b)`` (which lets the first two merge any chain of
  scale and shift layers into one ``Mul`` and one ``Add``).

Refused: non-float tensors; constants that are graph inputs; constants whose broadcasting
would change ``x``'s shape; a Conv whose output, weight or bias has another consumer (the
rewrite would change what that consumer sees); an intermediate value with another consumer.
The rounding differs from the unfolded graph by float32 rounding of the folded products only.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import MatchResult, RewriteRuleClassBase, RewriteRuleSet

from edgec.passes._rewrite import RulesPass, constant, other_users, refuse

_MAX_ROUNDS = 16
_FLOATS = (ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.DOUBLE, ir.DataType.BFLOAT16)


def _static_shape(value: ir.Value) -> tuple[int, ...] | None:
    if value.shape is None or not value.shape.is_static():
        return None
    return tuple(int(d) for d in value.shape)


def _keeps_shape(shape: tuple[int, ...] | None, operand: np.ndarray) -> bool:
    if shape is None:
        return False
    try:
        return np.broadcast_shapes(shape, operand.shape) == shape
    except ValueError:
        return False


def _constant_operand(value: ir.Value) -> np.ndarray | None:
    if value.is_graph_input():
        return None
    return constant(value)


def _per_channel(operand: np.ndarray, out_shape: tuple[int, ...]) -> np.ndarray | None:
    """``operand`` as a vector over axis 1 of ``out_shape``, if it varies along nothing else."""
    if len(out_shape) < 2 or operand.ndim > len(out_shape):
        return None
    channel_shape = (1, out_shape[1]) + (1,) * (len(out_shape) - 2)
    if not _keeps_shape(channel_shape, operand):
        return None
    return np.broadcast_to(operand, channel_shape).reshape(out_shape[1])


class _IntoConv(RewriteRuleClassBase):
    """``Mul``/``Add`` by a per-output-channel constant after a Conv -> the Conv."""

    def __init__(self, op_type: str) -> None:
        super().__init__(name=f"{op_type}IntoConv")
        self.op_type = op_type

    def pattern(self, op, x, w, c):
        conv = op.Conv(
            x, w, _allow_other_inputs=True, _allow_other_attributes=True, _outputs=["conv_out"]
        )
        return getattr(op, self.op_type)(conv, c)

    def check(self, context, x, w, c, conv_out) -> MatchResult:
        conv = conv_out.producer()
        if conv.domain not in ("", "ai.onnx") or conv_out.dtype not in _FLOATS:
            return refuse(None, "not a float ONNX Conv", log=False)
        operand = _constant_operand(c)
        shape = _static_shape(conv_out)
        if operand is None or shape is None:
            return refuse(None, "operand not constant or shape unknown", log=False)
        if _per_channel(operand, shape) is None:
            return refuse(None, "operand is not per-channel", log=False)
        params = [v for v in conv.inputs[1:3] if v is not None]
        for value in params:
            if value.is_graph_input() or constant(value) is None:
                return refuse(conv, f"{self.op_type} not folded: '{value.name}' is not constant")
            if other_users(value, {conv}):
                return refuse(conv, f"{self.op_type} not folded: '{value.name}' is shared")
        return MatchResult()

    def rewrite(self, op, x, w, c, conv_out):
        conv = conv_out.producer()
        weight = constant(w)
        dtype = weight.dtype
        vector = _per_channel(constant(c), _static_shape(conv_out)).astype(np.float64)
        bias_value = conv.inputs[2] if len(conv.inputs) > 2 else None
        bias = (
            constant(bias_value).astype(np.float64)
            if bias_value is not None
            else np.zeros(weight.shape[0], np.float64)
        )
        if self.op_type == "Mul":
            weight = weight * vector.reshape((-1,) + (1,) * (weight.ndim - 1))
            bias = bias * vector
        else:
            bias = bias + vector
        bias_name = bias_value.name if bias_value is not None else f"{conv_out.name}_bias"
        new_w = op.initializer(ir.tensor(weight.astype(dtype)), name=w.name)
        new_b = op.initializer(ir.tensor(bias.astype(dtype)), name=bias_name)
        return op.Conv(x, new_w, new_b, _name=conv.name, **conv.attributes)


class _MergeChain(RewriteRuleClassBase):
    """``outer(inner(x, a), b)`` with constant ``a``, ``b`` -> one op or a reordered pair."""

    def __init__(self, inner: str, outer: str) -> None:
        super().__init__(name=f"Merge{inner}{outer}")
        self.inner = inner
        self.outer = outer

    def pattern(self, op, x, a, b):
        inner = getattr(op, self.inner)(x, a, _outputs=["mid"])
        return getattr(op, self.outer)(inner, b)

    def check(self, context, x, a, b, mid) -> MatchResult:
        if x.dtype not in _FLOATS or constant(x) is not None:
            return refuse(None, "not a float tensor op", log=False)
        first, second = _constant_operand(a), _constant_operand(b)
        shape = _static_shape(x)
        if first is None or second is None:
            return refuse(None, "operands are not constants", log=False)
        if not (_keeps_shape(shape, first) and _keeps_shape(shape, second)):
            return refuse(None, "broadcasting changes the shape", log=False)
        return MatchResult()

    def rewrite(self, op, x, a, b, mid):
        first, second = constant(a), constant(b)
        dtype = first.dtype
        base = mid.name or "affine"
        if self.inner == self.outer == "Mul":
            merged = op.initializer(ir.tensor((first * second).astype(dtype)), name=f"{base}_mul")
            return op.Mul(x, merged)
        if self.inner == self.outer == "Add":
            merged = op.initializer(ir.tensor((first + second).astype(dtype)), name=f"{base}_add")
            return op.Add(x, merged)
        # Mul(Add(x, a), b) == Add(Mul(x, b), a * b)
        shift = op.initializer(ir.tensor((first * second).astype(dtype)), name=f"{base}_shift")
        scaled = op.Mul(x, b)
        # so the next merge sees a static shape
        scaled.shape = x.shape.copy() if x.shape is not None else None
        scaled.type = x.type
        return op.Add(scaled, shift)


class FoldAffinePass(RulesPass):
    """Fold per-channel scale/shift layers into Convs and merge chains of them.

    See the module docstring for the math and the refusals.
    """

    rules = RewriteRuleSet(
        [
            _IntoConv.rule("Mul"),
            _IntoConv.rule("Add"),
            _MergeChain.rule("Mul", "Mul"),
            _MergeChain.rule("Add", "Add"),
            _MergeChain.rule("Add", "Mul"),
        ],
        commute=True,
    )
    verb = "folded"
    # Reordering a Mul past an Add enables merges the same round cannot see: repeat until
    # nothing fires (each merge removes a node, so this ends).
    rounds = _MAX_ROUNDS
