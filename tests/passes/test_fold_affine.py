"""FoldAffinePass: per-channel Mul/Add after a Conv fold into it; scale/shift chains merge."""

from __future__ import annotations

import numpy as np
from onnx import helper
from pass_helpers import assert_same_outputs, make_model, ops, run_pass

from edgec.passes.fold_affine import FoldAffinePass

RNG = np.random.default_rng(0)


def test_conv_then_scale_and_shift_folds_into_the_conv():
    """Conv -> Mul[C,1,1] -> Add[C,1,1] -> Relu (Caffe2's BN + scale layer) is Conv -> Relu."""
    inits = {
        "w": RNG.standard_normal((4, 3, 3, 3)),
        "s": RNG.standard_normal((4, 1, 1)),
        "t": RNG.standard_normal((4, 1, 1)),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1], group=1),
        helper.make_node("Mul", ["c", "s"], ["m"]),
        helper.make_node("Add", ["t", "m"], ["a"]),
        helper.make_node("Relu", ["a"], ["y"]),
    ]
    model = make_model(nodes, {"x": [1, 3, 5, 5]}, ["y"], inits)
    after, modified = run_pass(model, FoldAffinePass())
    assert modified and ops(after) == ["Conv", "Relu"]
    assert_same_outputs(model, after)


def test_chain_of_scales_and_shifts_merges_into_one_mul_and_one_add():
    """Mul, Add, Mul, Add by per-channel constants on a Concat become one Mul and one Add."""
    inits = {name: RNG.standard_normal((5, 1, 1)) for name in ("a", "b", "c", "d")}
    nodes = [
        helper.make_node("Concat", ["x1", "x2"], ["x"], axis=1),
        helper.make_node("Mul", ["x", "a"], ["m1"]),
        helper.make_node("Add", ["m1", "b"], ["a1"]),
        helper.make_node("Mul", ["a1", "c"], ["m2"]),
        helper.make_node("Add", ["m2", "d"], ["y"]),
    ]
    model = make_model(nodes, {"x1": [1, 2, 4, 4], "x2": [1, 3, 4, 4]}, ["y"], inits)
    after, modified = run_pass(model, FoldAffinePass())
    assert modified and sorted(ops(after)) == ["Add", "Concat", "Mul"]
    assert_same_outputs(model, after)


def test_mul_that_varies_spatially_is_not_folded_into_the_conv():
    """A Mul by a [1, 1, H, W] map is not per-channel: the Conv weights cannot absorb it."""
    inits = {"w": RNG.standard_normal((4, 3, 3, 3)), "s": RNG.standard_normal((1, 1, 3, 3))}
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"]),
        helper.make_node("Mul", ["c", "s"], ["y"]),
    ]
    model = make_model(nodes, {"x": [1, 3, 5, 5]}, ["y"], inits)
    after, modified = run_pass(model, FoldAffinePass())
    assert not modified and ops(after) == ["Conv", "Mul"]


def test_conv_whose_weight_is_shared_is_not_rewritten():
    """Two Convs share a weight: scaling it for one would change the other, so nothing folds."""
    inits = {"w": RNG.standard_normal((4, 3, 3, 3)), "s": RNG.standard_normal((4, 1, 1))}
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"]),
        helper.make_node("Mul", ["c", "s"], ["y"]),
        helper.make_node("Conv", ["x", "w"], ["z"]),
    ]
    model = make_model(nodes, {"x": [1, 3, 5, 5]}, ["y", "z"], inits)
    after, modified = run_pass(model, FoldAffinePass())
    assert not modified and ops(after) == ["Conv", "Mul", "Conv"]
