"""Rewrite ``Sum`` of one or two inputs as ``Identity`` / ``Add``.

Caffe2 exports (resnet50, shufflenet) write residual connections as ``Sum(a, b)``. ``Add`` is
the same computation with the same multidirectional broadcasting, and it is the op every
backend fuses (ONNX Runtime's Conv+Add, TensorRT's elementwise fusions, TVM's injective
fusion rules key on ``Add``). ``Sum`` of one input is the identity. ``Sum`` of three or more
inputs is left alone: a chain of Adds would be more nodes, not fewer.
"""

from __future__ import annotations

import onnx_ir.passes.common as common
from onnxscript.rewriter import MatchResult, RewriteRuleClassBase, RewriteRuleSet

from edgec.passes._rewrite import RulesPass


class _SumOfTwo(RewriteRuleClassBase):
    """``Sum(a, b)`` -> ``Add(a, b)``."""

    def pattern(self, op, a, b):
        return op.Sum(a, b, _outputs=["out"])

    def check(self, context, a, b, out) -> MatchResult:
        return MatchResult()

    def rewrite(self, op, a, b, out):
        return op.Add(a, b)


class _SumOfOne(RewriteRuleClassBase):
    """``Sum(a)`` -> ``Identity(a)``."""

    def pattern(self, op, a):
        return op.Sum(a, _outputs=["out"])

    def check(self, context, a, out) -> MatchResult:
        return MatchResult()

    def rewrite(self, op, a, out):
        return op.Identity(a)


class ReplaceSumWithAddPass(RulesPass):
    """Replace ``Sum`` of two inputs by ``Add`` and of one input by nothing."""

    rules = RewriteRuleSet([_SumOfTwo.rule(), _SumOfOne.rule()])
    cleanup = (common.IdentityEliminationPass,)
