"""AnnotateFusionsPass marks Conv+Relu/Clip pairs in metadata and changes nothing else."""

from __future__ import annotations

import numpy as np
from onnx import helper
from pass_helpers import make_model, ops, run_pass

from edgec.passes.annotate_fusions import FUSION_KEY, ROLE_KEY, AnnotateFusionsPass

W = {"w": np.random.default_rng(0).standard_normal((4, 3, 3, 3))}


def _props(node) -> dict[str, str]:
    return {p.key: p.value for p in node.metadata_props}


def test_conv_relu_and_conv_clip_pairs_are_annotated_once():
    """Conv->Relu and Conv->Clip get anchor/epilogue marks; a second run reports no change."""
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c1"], name="conv1"),
        helper.make_node("Relu", ["c1"], ["y1"], name="relu"),
        helper.make_node("Conv", ["x", "w"], ["c2"], name="conv2"),
        helper.make_node("Clip", ["c2"], ["y2"], name="clip"),
    ]
    model = make_model(nodes, {"x": [1, 3, 5, 5]}, ["y1", "y2"], W)
    after, modified = run_pass(model, AnnotateFusionsPass())
    assert modified and ops(after) == ops(model)
    marks = {n.name: _props(n) for n in after.graph.node}
    assert marks["conv1"] == {FUSION_KEY: "Conv+Relu", ROLE_KEY: "anchor"}
    assert marks["relu"] == {FUSION_KEY: "Conv+Relu", ROLE_KEY: "epilogue"}
    assert marks["clip"][FUSION_KEY] == "Conv+Clip"
    _, again = run_pass(after, AnnotateFusionsPass())
    assert not again


def test_conv_with_two_consumers_is_not_annotated():
    """A Conv whose output also feeds another op cannot absorb the Relu: no marks."""
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
        helper.make_node("Relu", ["c"], ["y1"], name="relu"),
        helper.make_node("Sigmoid", ["c"], ["y2"], name="sigmoid"),
    ]
    model = make_model(nodes, {"x": [1, 3, 5, 5]}, ["y1", "y2"], W)
    after, modified = run_pass(model, AnnotateFusionsPass())
    assert not modified
    assert all(not _props(n) for n in after.graph.node)
