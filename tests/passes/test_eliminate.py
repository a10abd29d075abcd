"""Dropout, no-op and Sum rewrites: what goes, what stays, and outputs that do not change."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper
from pass_helpers import assert_same_outputs, make_model, ops, run_pass

from edgec.passes.eliminate import EliminateDropoutPass, EliminateNoOpsPass
from edgec.passes.sum_to_add import ReplaceSumWithAddPass

W = {"w": np.random.default_rng(0).standard_normal((4, 3, 3, 3))}


def _conv_dropout_relu(extra_inputs=(), outputs=("d",), **attrs):
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["r"]),
        helper.make_node("Dropout", ["r", *extra_inputs], list(outputs), **attrs),
        helper.make_node("Relu", ["d"], ["y"]),
    ]
    return nodes


def test_opset_9_dropout_is_removed():
    """Opset 9 Dropout (ratio attribute only) is the identity at inference: removed."""
    model = make_model(_conv_dropout_relu(ratio=0.5), {"x": [1, 3, 5, 5]}, ["y"], W, opset=9)
    after, modified = run_pass(model, EliminateDropoutPass())
    assert modified and ops(after) == ["Conv", "Relu"]
    assert_same_outputs(model, after)


def test_opset_13_dropout_without_training_mode_is_removed():
    """Opset 13 Dropout with a ratio but no training_mode input is removed."""
    nodes = _conv_dropout_relu(extra_inputs=["ratio"])
    inits = W | {"ratio": np.array(0.3)}
    model = make_model(nodes, {"x": [1, 3, 5, 5]}, ["y"], inits, opset=13)
    after, modified = run_pass(model, EliminateDropoutPass())
    assert modified and ops(after) == ["Conv", "Relu"]


def test_dropout_in_training_mode_is_kept():
    """Opset 13 Dropout with training_mode = true is real dropout: kept."""
    nodes = _conv_dropout_relu(extra_inputs=["ratio", "training"])
    inits = W | {"ratio": np.array(0.3), "training": np.array(True)}
    model = make_model(nodes, {"x": [1, 3, 5, 5]}, ["y"], inits, opset=13)
    after, modified = run_pass(model, EliminateDropoutPass())
    assert not modified and "Dropout" in ops(after)


def test_dropout_whose_mask_is_used_is_kept():
    """A Dropout whose mask output feeds the graph stays (removing it would orphan the mask)."""
    nodes = _conv_dropout_relu(outputs=("d", "mask"))
    model = make_model(nodes, {"x": [1, 3, 5, 5]}, ["y", ("mask", TensorProto.BOOL)], W, opset=13)
    after, modified = run_pass(model, EliminateDropoutPass())
    assert not modified and "Dropout" in ops(after)


@pytest.mark.parametrize(
    ("op", "value", "constant_first"),
    [("Add", 0.0, False), ("Add", 0.0, True), ("Sub", 0.0, False), ("Mul", 1.0, False),
     ("Mul", 1.0, True), ("Div", 1.0, False)],
)  # fmt: skip
def test_arithmetic_no_op_is_removed(op, value, constant_first):
    """x+0, 0+x, x-0, x*1, 1*x, x/1 with a per-channel constant disappear."""
    args = ["c", "r"] if constant_first else ["r", "c"]
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["r"]),
        helper.make_node(op, args, ["s"]),
        helper.make_node("Relu", ["s"], ["y"]),
    ]
    inits = W | {"c": np.full((4, 1, 1), value)}
    model = make_model(nodes, {"x": [1, 3, 5, 5]}, ["y"], inits)
    after, modified = run_pass(model, EliminateNoOpsPass())
    assert modified and ops(after) == ["Conv", "Relu"]
    assert_same_outputs(model, after)


def test_add_zero_that_broadcasts_to_a_bigger_shape_is_kept():
    """x[3] + zeros[2, 3] is [2, 3], not x: the Add stays."""
    nodes = [helper.make_node("Add", ["x", "z"], ["y"])]
    model = make_model(nodes, {"x": [3]}, ["y"], {"z": np.zeros((2, 3))})
    after, modified = run_pass(model, EliminateNoOpsPass())
    assert not modified and ops(after) == ["Add"]


def test_add_of_nonzero_constant_is_kept():
    """x + 0.5 is not a no-op."""
    nodes = [helper.make_node("Add", ["x", "z"], ["y"])]
    model = make_model(nodes, {"x": [3]}, ["y"], {"z": np.full(3, 0.5)})
    after, modified = run_pass(model, EliminateNoOpsPass())
    assert not modified and ops(after) == ["Add"]


@pytest.mark.parametrize(
    ("target", "removed"),
    [([1, 4, 3, 3], True), ([0, 4, -1, 3], True), ([1, 36], False), ([1, 4, 9], False)],
)
def test_reshape_to_the_same_shape_is_removed(target, removed):
    """Reshape whose target (0 and -1 resolved) equals the input shape goes; others stay."""
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["r"]),
        helper.make_node("Reshape", ["r", "s"], ["t"]),
        helper.make_node("Relu", ["t"], ["y"]),
    ]
    model = make_model(nodes, {"x": [1, 3, 5, 5]}, ["y"], W | {"s": np.array(target, np.int64)})
    after, modified = run_pass(model, EliminateNoOpsPass())
    assert modified == removed
    assert ("Reshape" in ops(after)) != removed
    assert_same_outputs(model, after)


def test_identity_nodes_are_removed():
    """Identity between two ops goes; the graph output keeps its name."""
    nodes = [
        helper.make_node("Relu", ["x"], ["a"]),
        helper.make_node("Identity", ["a"], ["b"]),
        helper.make_node("Relu", ["b"], ["y"]),
    ]
    model = make_model(nodes, {"x": [2, 3]}, ["y"], {})
    after, modified = run_pass(model, EliminateNoOpsPass())
    assert modified and ops(after) == ["Relu", "Relu"]
    assert [o.name for o in after.graph.output] == ["y"]


def test_sum_of_two_becomes_add_and_sum_of_three_stays():
    """Sum(a, b) -> Add(a, b); Sum(a, b, c) is left alone (Adds would be more nodes)."""
    nodes = [
        helper.make_node("Sum", ["x", "w"], ["s2"]),
        helper.make_node("Sum", ["s2", "x", "w"], ["y"]),
    ]
    model = make_model(nodes, {"x": [1, 4, 3, 3]}, ["y"], {"w": np.ones((4, 1, 1))}, opset=9)
    after, modified = run_pass(model, ReplaceSumWithAddPass())
    assert modified and ops(after) == ["Add", "Sum"]
    assert_same_outputs(model, after)
    _, again = run_pass(after, ReplaceSumWithAddPass())
    assert not again
