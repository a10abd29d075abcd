"""Fold inference-mode BatchNormalization away.

At inference, ``BatchNormalization(y) = gamma * (y - mean) / sqrt(var + eps) + beta``, a
per-channel affine map ``y * s + t`` with ``s = gamma / sqrt(var + eps)`` and
``t = beta - mean * s``.

* After ``Conv`` / ``ConvTranspose`` / ``Gemm`` (``y = W x + B``) the map folds into the
  producer: ``W' = W * s`` (along the output-channel axis, per group for ConvTranspose) and
  ``B' = (B - mean) * s + beta``. These are onnxscript's rules
  (``onnxscript.rewriter.rules.common._fuse_batchnorm``), reused as they are; this module only
  adds the refusals below and logs why a node was kept.
* Anywhere else (after ``Concat``, a graph input, a pooling op, a producer whose output has
  other consumers, or one whose weight is computed at run time) it becomes one ``Mul`` by ``s``
  and one ``Add`` of ``t``, each a constant of shape ``[C, 1, ..., 1]`` that broadcasts over
  the channel axis.

Refused (the node stays, the reason is logged at ``debug``):

* a parameter (gamma, beta, mean, var, or the producer's weight/bias) is not a constant
  initializer, or is a graph input (a user could feed another value at run time);
* the producer's weight or bias is shared with another node (rewriting it in place would change
  that node too) — such a BatchNormalization also does not become Mul+Add, so the model is
  left exactly as it was;
* the node may train: opset >= 14 with ``training_mode=1``, opset < 7 without ``is_test=1``,
  opset < 9 with ``spatial=0`` (per-activation statistics), or its running-mean/var outputs are
  used;
* ``var + eps`` is not positive everywhere.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import MatchResult, RewriteRuleClassBase, RewriteRuleSet

# The rules live in a private module: onnxscript's package exports only the rule objects, and
# the classes are needed to add the refusals and the logging (onnxscript is pinned in
# constraints.txt).
from onnxscript.rewriter.rules.common._fuse_batchnorm import (
    FuseBatchNormIntoConv,
    FuseBatchNormIntoConvTranspose,
    FuseBatchNormIntoGemm,
)

from edgec.passes._rewrite import RulesPass, constant, opset_version, refuse, used_elsewhere

FOLDABLE_PRODUCERS = ("Conv", "ConvTranspose", "Gemm")


def _training_reason(node: ir.Node, model: ir.Model) -> str | None:
    """Why ``node`` may run in training mode, or ``None`` when it is inference-only."""
    version = node.version or opset_version(model)
    attrs = node.attributes
    if used_elsewhere(node):
        return "its running mean/variance outputs are used"
    if version >= 14 and (mode := attrs.get("training_mode")) is not None and mode.as_int():
        return "training_mode=1"
    if version < 7 and ((is_test := attrs.get("is_test")) is None or not is_test.as_int()):
        return f"opset {version} BatchNormalization without is_test=1 trains"
    if version < 9 and (spatial := attrs.get("spatial")) is not None and not spatial.as_int():
        return "spatial=0 (per-activation statistics)"
    return None


def _parameter_reason(node: ir.Node) -> str | None:
    """Why the BN parameters cannot be folded, or ``None``."""
    if len(node.inputs) < 5:
        return "it has fewer than 5 inputs"
    for value in node.inputs[1:5]:
        if value is None:
            return "a parameter is missing"
        if value.is_graph_input():
            return f"parameter '{value.name}' is a graph input"
        if constant(value) is None:
            return f"parameter '{value.name}' is not a constant"
    var = constant(node.inputs[4]).astype(np.float64)
    if not np.all(var + _epsilon(node) > 0):
        return "variance + epsilon is not positive"
    return None


def _epsilon(node: ir.Node) -> float:
    eps = node.attributes.get("epsilon")
    return 1e-5 if eps is None else eps.as_float()


class _CheckedFold:
    """Mixin for onnxscript's BN-fusion rules: add the refusals and log every reason."""

    def check(self, context, x, inbound_out, batchnorm_out) -> MatchResult:
        bn = batchnorm_out.producer()
        reason = _training_reason(bn, context.model) or _parameter_reason(bn)
        if reason:
            return refuse(bn, reason)
        result = super().check(context, x, inbound_out, batchnorm_out)
        if not result:
            return refuse(bn, f"not folded into {inbound_out.producer().op_type}: {result.reason}")
        return result

    def rewrite(self, op, x, inbound_out, batchnorm_out):
        out = super().rewrite(op, x, inbound_out, batchnorm_out)
        out.producer().name = inbound_out.producer().name  # keep '/layer1/conv' for reports
        return out


class _IntoConv(_CheckedFold, FuseBatchNormIntoConv):
    pass


class _IntoConvTranspose(_CheckedFold, FuseBatchNormIntoConvTranspose):
    pass


class _IntoGemm(_CheckedFold, FuseBatchNormIntoGemm):
    pass


class _ToScaleShift(RewriteRuleClassBase):
    """``BatchNormalization(x)`` -> ``Add(Mul(x, s), t)`` where no producer can absorb it."""

    def pattern(self, op, x):
        return op.BatchNormalization(
            x, _allow_other_inputs=True, _allow_other_attributes=True, _outputs=["out"]
        )

    def check(self, context, x, out) -> MatchResult:
        bn = out.producer()
        producer = x.producer()
        if (
            producer is not None
            and producer.op_type in FOLDABLE_PRODUCERS
            and producer.domain in ("", "ai.onnx")
            and len(x.uses()) == 1
            and len(producer.inputs) > 1
            and constant(producer.inputs[1]) is not None
        ):
            # The fold into the producer was refused (and logged): leave the model unchanged.
            return refuse(bn, f"follows a {producer.op_type} whose fold was refused", log=False)
        reason = _training_reason(bn, context.model) or _parameter_reason(bn)
        if reason:
            return refuse(bn, reason)
        if x.shape is None or len(x.shape) < 2:
            return refuse(bn, "the input rank is unknown")
        return MatchResult()

    def rewrite(self, op, x, out):
        bn = out.producer()
        gamma, beta, mean, var = (constant(v).astype(np.float64) for v in bn.inputs[1:5])
        scale = gamma / np.sqrt(var + _epsilon(bn))
        shift = beta - mean * scale
        dtype = x.dtype.numpy() if x.dtype is not None else np.float32
        shape = (-1,) + (1,) * (len(x.shape) - 2)
        base = out.name or bn.name or "bn"
        s = op.initializer(ir.tensor(scale.reshape(shape).astype(dtype)), name=f"{base}_scale")
        t = op.initializer(ir.tensor(shift.reshape(shape).astype(dtype)), name=f"{base}_shift")
        scaled = op.Mul(x, s)
        # later folds need the static shape
        scaled.shape = x.shape.copy() if x.shape is not None else None
        scaled.type = x.type
        return op.Add(scaled, t)


class FoldBatchNormPass(RulesPass):
    """Fold every inference BatchNormalization into its producer or into one Mul+Add.

    The math and the refusals are in the module docstring. Folding into a producer runs first,
    so a BatchNormalization becomes Mul+Add only where no producer can take it.
    """

    rules = RewriteRuleSet(
        [
            _IntoConv.rule(name="BatchNormIntoConv"),
            _IntoConvTranspose.rule(name="BatchNormIntoConvTranspose"),
            _IntoGemm.rule(name="BatchNormIntoGemm"),
            _ToScaleShift.rule(name="BatchNormToMulAdd"),
        ]
    )
    verb = "folded"
