"""Annotate Conv + activation pairs that backends fuse, without fusing them.

ONNX has no fused Conv+Relu op in the default domain; ONNX Runtime, TensorRT and TVM each fuse
the pair themselves. This pass only marks the pair so reports and backends can see it: the
producer gets ``metadata_props["edgec.fusion"] = "Conv+Relu"`` (or ``+Clip``, ``+LeakyRelu``,
...) with ``edgec.fusion_role = "anchor"``, and the activation the same fusion name with
``edgec.fusion_role = "epilogue"``. A pair is marked when the activation is the producer's
only consumer and the producer's output is not a graph output. The graph and its numbers do
not change; re-running the pass changes nothing.
"""

from __future__ import annotations

import logging

import onnx_ir as ir

logger = logging.getLogger(__name__)

FUSION_KEY = "edgec.fusion"
ROLE_KEY = "edgec.fusion_role"
ANCHORS = ("Conv", "ConvTranspose")
EPILOGUES = ("Relu", "Clip", "LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish")


def _mark(node: ir.Node, fusion: str, role: str) -> bool:
    props = node.metadata_props
    if props.get(FUSION_KEY) == fusion and props.get(ROLE_KEY) == role:
        return False
    props[FUSION_KEY] = fusion
    props[ROLE_KEY] = role
    return True


class AnnotateFusionsPass(ir.passes.InPlacePass):
    """Mark Conv/ConvTranspose followed by Relu/Clip/... as a fusion candidate.

    Attributes:
        anchors: Producer op types that can absorb an activation.
        epilogues: Activation op types that can be absorbed.
    """

    def __init__(
        self, anchors: tuple[str, ...] = ANCHORS, epilogues: tuple[str, ...] = EPILOGUES
    ) -> None:
        super().__init__()
        self.anchors = anchors
        self.epilogues = epilogues

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        marked = 0
        for node in ir.traversal.RecursiveGraphIterator(model.graph):
            if node.op_type not in self.anchors or node.domain not in ("", "ai.onnx"):
                continue
            out = node.outputs[0]
            users = out.uses()
            if len(users) != 1 or out.is_graph_output():
                continue
            user = users[0][0] if isinstance(users[0], tuple) else users[0].node
            if user.op_type not in self.epilogues or user.domain not in ("", "ai.onnx"):
                continue
            fusion = f"{node.op_type}+{user.op_type}"
            changed = _mark(node, fusion, "anchor")
            changed = _mark(user, fusion, "epilogue") or changed
            marked += int(changed)
        if marked:
            logger.info("%s: marked %d pairs", type(self).__name__, marked)
        return ir.passes.PassResult(model, modified=bool(marked))
