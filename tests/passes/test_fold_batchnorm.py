"""FoldBatchNormPass: BN folds into Conv/ConvTranspose/Gemm or becomes one Mul+Add; refusals.

Numbers are checked on ONNX Runtime (graph optimisations off) within rtol 1e-4, atol 1e-5.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
from onnx import helper
from pass_helpers import assert_same_outputs, make_model, ops, run_pass

from edgec.passes.fold_batchnorm import FoldBatchNormPass

RNG = np.random.default_rng(0)


def _bn_params(prefix: str, channels: int) -> dict[str, np.ndarray]:
    return {
        f"{prefix}_gamma": RNG.uniform(0.5, 1.5, channels),
        f"{prefix}_beta": RNG.standard_normal(channels),
        f"{prefix}_mean": RNG.standard_normal(channels),
        f"{prefix}_var": RNG.uniform(0.5, 2.0, channels),
    }


def _bn(x: str, out: str, prefix: str, **attrs) -> helper.NodeProto:
    names = [f"{prefix}_{p}" for p in ("gamma", "beta", "mean", "var")]
    return helper.make_node("BatchNormalization", [x, *names], [out], name=prefix, **attrs)


def _conv_bn(bias: bool, group: int = 1, channels_in: int = 4, channels_out: int = 8):
    inits = {"w": RNG.standard_normal((channels_out, channels_in // group, 3, 3))}
    conv_inputs = ["x", "w"]
    if bias:
        inits["b"] = RNG.standard_normal(channels_out)
        conv_inputs.append("b")
    inits |= _bn_params("bn", channels_out)
    nodes = [
        helper.make_node("Conv", conv_inputs, ["c"], pads=[1, 1, 1, 1], group=group, name="conv"),
        _bn("c", "y", "bn", epsilon=1e-3),
    ]
    return make_model(nodes, {"x": [1, channels_in, 6, 6]}, ["y"], inits)


@pytest.mark.parametrize(
    ("case", "bias", "group", "cin", "cout"),
    [
        ("with bias", True, 1, 4, 8),
        ("without bias", False, 1, 4, 8),
        ("grouped", True, 2, 4, 8),
        ("depthwise", False, 4, 4, 4),
    ],
)
def test_conv_bn_folds_into_the_conv(case, bias, group, cin, cout):
    """Conv+BN (with/without bias, grouped, depthwise) becomes one Conv with the same outputs."""
    model = _conv_bn(bias, group, cin, cout)
    folded, modified = run_pass(model, FoldBatchNormPass())
    assert modified, case
    assert ops(folded) == ["Conv"]
    assert_same_outputs(model, folded)


@pytest.mark.parametrize("group", [1, 2])
def test_conv_transpose_bn_folds_into_the_conv_transpose(group):
    """ConvTranspose+BN (plain and grouped) becomes one ConvTranspose."""
    inits = {"w": RNG.standard_normal((4, 6 // group, 3, 3)), "b": RNG.standard_normal(6)}
    inits |= _bn_params("bn", 6)
    nodes = [
        helper.make_node("ConvTranspose", ["x", "w", "b"], ["c"], strides=[2, 2], group=group),
        _bn("c", "y", "bn"),
    ]
    model = make_model(nodes, {"x": [1, 4, 5, 5]}, ["y"], inits)
    folded, modified = run_pass(model, FoldBatchNormPass())
    assert modified and ops(folded) == ["ConvTranspose"]
    assert_same_outputs(model, folded)


@pytest.mark.parametrize("trans_b", [0, 1])
def test_gemm_bn_folds_into_the_gemm(trans_b):
    """Gemm+BN on a [N, C] output becomes one Gemm (weight stored either way round)."""
    shape = (5, 16) if trans_b else (16, 5)
    inits = {"w": RNG.standard_normal(shape), "b": RNG.standard_normal(5)} | _bn_params("bn", 5)
    nodes = [
        helper.make_node("Gemm", ["x", "w", "b"], ["g"], transB=trans_b),
        _bn("g", "y", "bn"),
    ]
    model = make_model(nodes, {"x": [3, 16]}, ["y"], inits)
    folded, modified = run_pass(model, FoldBatchNormPass())
    assert modified and ops(folded) == ["Gemm"]
    assert_same_outputs(model, folded)


def test_bn_after_concat_becomes_one_mul_and_one_add():
    """A BN with no Conv before it (after Concat, as in densenet) becomes exactly Mul+Add."""
    nodes = [
        helper.make_node("Concat", ["a", "b"], ["cat"], axis=1),
        _bn("cat", "y", "bn"),
    ]
    inputs = {"a": [1, 3, 4, 4], "b": [1, 2, 4, 4]}
    model = make_model(nodes, inputs, ["y"], _bn_params("bn", 5))
    folded, modified = run_pass(model, FoldBatchNormPass())
    assert modified and sorted(ops(folded)) == ["Add", "Concat", "Mul"]
    assert_same_outputs(model, folded)


def test_bn_on_a_graph_input_opset_9_becomes_mul_add():
    """Opset 9 (no training_mode), IR 3 style: a BN directly on the input becomes Mul+Add."""
    model = make_model(
        [_bn("x", "y", "bn")], {"x": [2, 3, 4, 4]}, ["y"], _bn_params("bn", 3), opset=9
    )
    folded, modified = run_pass(model, FoldBatchNormPass())
    assert modified and ops(folded) == ["Mul", "Add"]
    assert_same_outputs(model, folded)


def _assert_unchanged(model, caplog, reason: str) -> None:
    with caplog.at_level(logging.DEBUG, logger="edgec.passes"):
        after, modified = run_pass(model, FoldBatchNormPass())
    assert not modified
    assert ops(after) == ops(model)
    assert after.graph.initializer == model.graph.initializer
    assert any(reason in r.getMessage() and "kept" in r.getMessage() for r in caplog.records)


def test_refused_when_bn_parameters_are_graph_inputs(caplog):
    """BN parameters that are graph inputs (a user may feed them) leave the model unchanged."""
    model = _conv_bn(bias=True)
    gamma = next(i for i in model.graph.initializer if i.name == "bn_gamma")
    model.graph.input.append(helper.make_tensor_value_info("bn_gamma", 1, list(gamma.dims)))
    _assert_unchanged(model, caplog, "graph input")


def test_refused_when_the_conv_weight_is_shared(caplog):
    """A Conv weight shared with another Conv is not rewritten: BN stays, nothing changes."""
    inits = {"w": RNG.standard_normal((4, 4, 3, 3))} | _bn_params("bn", 4)
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c1"], pads=[1, 1, 1, 1]),
        _bn("c1", "y1", "bn"),
        helper.make_node("Conv", ["x", "w"], ["y2"], pads=[1, 1, 1, 1]),
    ]
    model = make_model(nodes, {"x": [1, 4, 5, 5]}, ["y1", "y2"], inits)
    _assert_unchanged(model, caplog, "used by another node")


def test_refused_in_training_mode(caplog):
    """Opset 15 BN with training_mode=1 normalises with batch statistics: kept."""
    nodes = [_bn("x", "y", "bn", training_mode=1)]
    nodes[0].output.extend(["running_mean", "running_var"])
    model = make_model(nodes, {"x": [2, 3, 4, 4]}, ["y"], _bn_params("bn", 3), opset=15)
    _assert_unchanged(model, caplog, "training_mode")


def test_second_run_changes_nothing():
    """The pass is idempotent: after folding, a second run reports no change."""
    folded, _ = run_pass(_conv_bn(bias=True), FoldBatchNormPass())
    again, modified = run_pass(folded, FoldBatchNormPass())
    assert not modified and ops(again) == ["Conv"]
