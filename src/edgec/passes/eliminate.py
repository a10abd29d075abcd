"""Remove nodes that compute nothing at inference: Dropout and arithmetic/shape no-ops.

* ``Dropout`` is the identity at inference: always from opset 7 to 11 (the ``ratio`` attribute
  only acts in training), from opset 12 when ``training_mode`` is absent or a constant false,
  and before opset 7 when ``is_test=1``. A Dropout whose ``mask`` output is used is kept.
* ``Add(x, 0)``, ``Add(0, x)``, ``Sub(x, 0)``, ``Mul(x, 1)``, ``Mul(1, x)``, ``Div(x, 1)`` where
  the constant is all zeros/ones **and** broadcasting it leaves ``x``'s shape and type unchanged
  (``x[3] + zeros[2, 3]`` is not a no-op: it broadcasts to ``[2, 3]``).
* ``Reshape(x, s)`` whose target shape, with ``0`` (copy) and ``-1`` (infer) resolved against
  ``x``'s static shape, equals that shape.

Each match becomes an ``Identity`` which the pass then removes with onnx_ir's
``IdentityEliminationPass`` (that pass keeps an Identity only where a graph output needs it).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common as common
from onnxscript.rewriter import MatchResult, RewriteRuleClassBase, RewriteRuleSet

from edgec.passes._rewrite import RulesPass, constant, opset_version, refuse, used_elsewhere


class _DropoutAtInference(RewriteRuleClassBase):
    """``Dropout(x)`` -> ``x`` when the node cannot be in training mode."""

    def pattern(self, op, x):
        return op.Dropout(
            x, _allow_other_inputs=True, _allow_other_attributes=True, _outputs=["out"]
        )

    def check(self, context, x, out) -> MatchResult:
        node = out.producer()
        if used_elsewhere(node):
            return refuse(node, "its mask output is used")
        version = node.version or opset_version(context.model)
        if version < 7:
            is_test = node.attributes.get("is_test")
            if is_test is None or is_test.as_int() != 1:
                return refuse(node, f"opset {version} Dropout without is_test=1 trains")
        elif version >= 12 and len(node.inputs) > 2 and node.inputs[2] is not None:
            training = constant(node.inputs[2])
            if training is None or bool(training.item()):
                return refuse(node, "training_mode is not a constant false")
        return MatchResult()

    def rewrite(self, op, x, out):
        return op.Identity(x)


def _broadcast_keeps(x: ir.Value, other: np.ndarray) -> bool:
    """Whether ``x op other`` has exactly ``x``'s static shape (rank included)."""
    if x.shape is None or not x.shape.is_static():
        return False
    shape = tuple(int(d) for d in x.shape)
    try:
        return np.broadcast_shapes(shape, other.shape) == shape
    except ValueError:
        return False


class _BinaryNoOp(RewriteRuleClassBase):
    """``x <op> c`` (or ``c <op> x`` for commutative ops) -> ``x`` for an identity constant."""

    def __init__(self, op_type: str, neutral: float, constant_first: bool = False) -> None:
        side = "left" if constant_first else "right"
        super().__init__(name=f"{op_type}{int(neutral)}{side.title()}NoOp")
        self.op_type = op_type
        self.neutral = neutral
        self.constant_first = constant_first

    def pattern(self, op, x, c):
        args = (c, x) if self.constant_first else (x, c)
        return getattr(op, self.op_type)(*args, _outputs=["out"])

    def check(self, context, x, c, out) -> MatchResult:
        value = constant(c)
        if value is None or c.is_graph_input():
            return refuse(None, "operand is not a constant", log=False)
        if value.size == 0 or not np.all(value == self.neutral):
            return refuse(None, f"constant is not all {self.neutral}", log=False)
        if x.dtype != out.dtype or x.dtype != c.dtype:
            return refuse(None, "types differ", log=False)
        if not _broadcast_keeps(x, value):
            return refuse(out.producer(), "broadcasting the constant changes the shape")
        return MatchResult()

    def rewrite(self, op, x, c, out):
        return op.Identity(x)


def _resolve_reshape(shape: tuple[int, ...], target: np.ndarray, allowzero: bool) -> tuple:
    dims = [int(d) for d in target.reshape(-1)]
    resolved = [
        shape[i] if d == 0 and not allowzero and i < len(shape) else d for i, d in enumerate(dims)
    ]
    if resolved.count(-1) == 1:
        known = int(np.prod([d for d in resolved if d != -1]))
        total = int(np.prod(shape))
        if known == 0 or total % known:
            return ()
        resolved[resolved.index(-1)] = total // known
    return tuple(resolved)


class _ReshapeToSameShape(RewriteRuleClassBase):
    """``Reshape(x, s)`` -> ``x`` when ``s`` resolves to ``x``'s own static shape."""

    def pattern(self, op, x, s):
        return op.Reshape(x, s, _allow_other_attributes=True, _outputs=["out"])

    def check(self, context, x, s, out) -> MatchResult:
        target = constant(s)
        if target is None or x.shape is None or not x.shape.is_static():
            return refuse(None, "shape is not static", log=False)
        shape = tuple(int(d) for d in x.shape)
        allow = out.producer().attributes.get("allowzero")
        allowzero = allow is not None and allow.as_int() == 1
        if _resolve_reshape(shape, target, allowzero) != shape:
            return refuse(None, "reshape changes the shape", log=False)
        return MatchResult()

    def rewrite(self, op, x, s, out):
        return op.Identity(x)


class EliminateDropoutPass(RulesPass):
    """Remove Dropout nodes that are the identity at inference (see the module docstring)."""

    rules = RewriteRuleSet([_DropoutAtInference.rule()])
    verb = "removed"
    cleanup = (common.IdentityEliminationPass, common.RemoveUnusedNodesPass)


class EliminateNoOpsPass(RulesPass):
    """Remove ``Add 0``/``Sub 0``/``Mul 1``/``Div 1``, same-shape Reshape and Identity nodes.

    Identity nodes are removed by onnx_ir's ``IdentityEliminationPass`` as the last step, so a
    model with nothing else to remove still loses its Identity nodes here.
    """

    rules = RewriteRuleSet(
        [
            _BinaryNoOp.rule("Add", 0.0),
            _BinaryNoOp.rule("Add", 0.0, constant_first=True),
            _BinaryNoOp.rule("Sub", 0.0),
            _BinaryNoOp.rule("Mul", 1.0),
            _BinaryNoOp.rule("Mul", 1.0, constant_first=True),
            _BinaryNoOp.rule("Div", 1.0),
            _ReshapeToSameShape.rule(),
        ]
    )
    verb = "removed"
    finish = (("Identity", common.IdentityEliminationPass),)
