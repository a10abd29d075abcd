"""Constant folding with size limits: onnxscript's folder, plus small ``ConstantOfShape``.

onnxscript's ``FoldConstantsPass`` evaluates every node whose inputs are constants (ONNX's
reference evaluator), and — with ``shape_inference=True`` — folds ``Shape``-derived subgraphs
once input shapes are static (``Shape -> Gather -> Concat -> Reshape`` becomes a Reshape by a
constant). Its limits keep folding from bloating a model:

* a node with an input larger than ``input_size_limit`` elements is not evaluated (unless it is
  that input's only consumer, e.g. a Transpose of a weight);
* a result larger than ``output_size_limit`` elements is kept only if it replaces at least as
  many constant elements as it adds.

onnxscript never folds ``ConstantOfShape`` (a few bytes of recipe for a possibly huge tensor).
This pass folds it when the result is a vector (rank <= 1) of at most
``constant_of_shape_limit`` elements, or any tensor of at most 256 elements: biases and
normalisation parameters written as ``ConstantOfShape`` (the Caffe2 light models) become
constants the BatchNormalization and affine folds can use, while weights — from 1x1 convs to
vgg19's 100 M-element fc6 — stay recipes. Each fold adds at most 32 KB.

onnxscript's folder also rewrites nodes it cannot evaluate (``SplitToSequence`` into ``Split``,
``ConcatFromSequence`` into ``Unsqueeze`` and ``Concat``, ``Shape`` into a ``Constant``) in the
newest form of each op. Each such replacement goes through
:func:`edgec.passes.opset_forms.replacement_error`: put in the older spelling where one exists,
dropped (the node stays, logged at ``debug``) where the model's opset has no form for it.

``SplitToSequence`` with a ``split`` input and ``keepdims=0`` is never folded: the ONNX spec
says ``keepdims`` is then ignored (shape inference keeps the axis), ONNX Runtime and
onnxscript's folder drop the axis, and the folded graph contradicts its own inferred shapes.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx_ir as ir
from onnxscript.optimizer import _constant_folding

from edgec.passes._rewrite import constant
from edgec.passes.opset_forms import replacement_error

logger = logging.getLogger("edgec.passes")

INPUT_LIMIT = 8192
OUTPUT_LIMIT = 1 << 20
CONSTANT_OF_SHAPE_LIMIT = 8192
_ANY_RANK_LIMIT = 256


def _ambiguous_keepdims(node: ir.Node) -> bool:
    """A SplitToSequence whose ``keepdims=0`` the spec ignores and ONNX Runtime obeys."""
    if node.op_type != "SplitToSequence" or node.domain not in ("", "ai.onnx"):
        return False
    keepdims = node.attributes.get("keepdims")
    has_split = len(node.inputs) > 1 and node.inputs[1] is not None
    return has_split and keepdims is not None and keepdims.as_int() == 0


class FoldConstantsPass(_constant_folding.FoldConstantsPass):
    """Fold constant subgraphs within size limits (see the module docstring).

    Attributes:
        input_size_limit: Largest constant input (elements) a folded node may read.
        output_size_limit: Largest folded result (elements) unless it shrinks the model.
        constant_of_shape_limit: Largest ``ConstantOfShape`` vector (elements) to materialise.
    """

    def __init__(
        self,
        input_size_limit: int = INPUT_LIMIT,
        output_size_limit: int = OUTPUT_LIMIT,
        constant_of_shape_limit: int = CONSTANT_OF_SHAPE_LIMIT,
    ) -> None:
        self.constant_of_shape_limit = constant_of_shape_limit
        super().__init__(
            shape_inference=True,
            input_size_limit=input_size_limit,
            output_size_limit=output_size_limit,
            should_fold=self._should_fold,
        )

    def process_node(
        self, node: ir.Node, is_function: bool
    ) -> _constant_folding.Replacement | None:
        """onnxscript's replacement for ``node``, unless it is invalid in the model's opset."""
        replacement = super().process_node(node, is_function)
        if replacement is None:
            return None
        if _ambiguous_keepdims(node):
            logger.debug(
                "SplitToSequence '%s' not folded: keepdims=0 with a split input means one "
                "thing to the ONNX spec and another to ONNX Runtime",
                node.name or "?",
            )
            return None
        error = replacement_error(replacement.new_nodes, self._opset_imports)
        if error is not None:
            logger.debug("%s '%s' not folded: %s", node.op_type, node.name or "?", error)
            return None
        return replacement

    def _should_fold(self, node: ir.Node) -> bool | None:
        """``True`` for a small ConstantOfShape, ``None`` (onnxscript's rules) otherwise."""
        if node.op_type != "ConstantOfShape" or node.domain not in ("", "ai.onnx"):
            return None
        shape = constant(node.inputs[0]) if node.inputs else None
        if shape is None:
            return None
        size = int(np.prod(shape))
        small = size <= _ANY_RANK_LIMIT or (
            shape.size <= 1 and size <= self.constant_of_shape_limit
        )
        return small or None
