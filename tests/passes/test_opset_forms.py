"""The canonical pipeline only emits what the model's opset allows (surprise 7).

Each case is a tiny old-opset model in which an onnxscript rewrite would write an op's newest
form: Gemm without C (opset 11), Unsqueeze/Split with axes or split inputs (opset 13),
Split with num_outputs (opset 18), Constant with value_ints (opset 12), Clip with min/max inputs
(opset 11). After canonicalisation each model passes ``onnx.checker`` with ``full_check=True``
and gives the same outputs on ONNX Runtime; where an older spelling exists, the rewrite still
happens in it.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper
from pass_helpers import assert_same_outputs, make_model, ops, run

from edgec.compiler.canonicalize import canonicalize
from edgec.passes.opset_forms import form_error, legalize


def _canonical(model: onnx.ModelProto) -> onnx.ModelProto:
    """The canonical model, valid for its own opset in full and equal on ORT."""
    result = canonicalize(model)
    assert result.opset_import[0].version == model.opset_import[0].version
    onnx.checker.check_model(result, full_check=True)
    assert_same_outputs(model, result)
    return result


def _node(model: onnx.ModelProto, op_type: str) -> onnx.NodeProto:
    (node,) = [n for n in model.graph.node if n.op_type == op_type]
    return node


def _gemm_with_zero_bias(opset: int) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Gemm", ["x", "w", "zero"], ["y"])]
    weights = {"w": rng.standard_normal((3, 4)), "zero": np.zeros(4)}
    return make_model(nodes, {"x": [2, 3]}, ["y"], weights, opset=opset, ir_version=5)


def test_gemm_keeps_its_zero_bias_before_opset_11(caplog):
    """Opset 10: C is required, so RemoveOptionalBiasFromGemm is skipped, with the reason."""
    with caplog.at_level(logging.DEBUG, logger="edgec.passes"):
        result = _canonical(_gemm_with_zero_bias(10))
    assert len(_node(result, "Gemm").input) == 3
    assert "RemoveOptionalBiasFromGemm skipped" in caplog.text
    assert "Gemm-9 (the form in force at opset 10) takes 3 inputs, not 2" in caplog.text


def test_gemm_loses_its_zero_bias_from_opset_11():
    """The same model at opset 11 (C optional): the rule still fires where it is valid."""
    result = _canonical(_gemm_with_zero_bias(11))
    assert len(_node(result, "Gemm").input) == 2


def _sequence_model(nodes, inputs, outputs, opset, initializers=None) -> onnx.ModelProto:
    return make_model(nodes, inputs, outputs, initializers or {}, opset=opset, ir_version=7)


def test_concat_from_sequence_new_axis_becomes_unsqueeze_with_axes_attribute_at_opset_12():
    """ConcatFromSequence(new_axis=1) is folded to Unsqueeze+Concat, axes as an attribute."""
    nodes = [
        helper.make_node("SequenceConstruct", ["a", "b", "c"], ["seq"]),
        helper.make_node("ConcatFromSequence", ["seq"], ["y"], axis=-1, new_axis=1),
    ]
    model = _sequence_model(nodes, {n: [2, 3] for n in "abc"}, ["y"], opset=12)
    result = _canonical(model)
    assert "ConcatFromSequence" not in ops(result)
    unsqueezes = [n for n in result.graph.node if n.op_type == "Unsqueeze"]
    assert len(unsqueezes) == 3
    for node in unsqueezes:
        assert len(node.input) == 1
        assert [a.name for a in node.attribute] == ["axes"]


def test_split_to_sequence_becomes_split_with_split_attribute_at_opset_11():
    """SplitToSequence by constant sizes is folded to Split with the ``split`` attribute."""
    nodes = [
        helper.make_node("SplitToSequence", ["x", "sizes"], ["seq"], axis=1),
        helper.make_node("SequenceAt", ["seq", "zero"], ["first"]),
        helper.make_node("SequenceAt", ["seq", "one"], ["second"]),
    ]
    constants = {
        "sizes": np.array([1, 3], np.int64),
        "zero": np.array(0, np.int64),
        "one": np.array(1, np.int64),
    }
    model = _sequence_model(nodes, {"x": [2, 4]}, ["first", "second"], 11, constants)
    result = _canonical(model)
    assert "SplitToSequence" not in ops(result)
    split = _node(result, "Split")
    assert len(split.input) == 1
    assert helper.get_node_attr_value(split, "split") == [1, 3]


def test_split_to_sequence_by_a_scalar_size_uses_split_attribute_at_opset_11():
    """A scalar size that divides the axis: onnxscript writes Split with num_outputs (opset
    18); at opset 11 it becomes the equal ``split`` sizes."""
    nodes = [
        helper.make_node("SplitToSequence", ["x", "one"], ["seq"], axis=0),
        helper.make_node("SequenceAt", ["seq", "last"], ["y"]),
    ]
    constants = {"one": np.array(1, np.int64), "last": np.array(2, np.int64)}
    model = _sequence_model(nodes, {"x": [3, 4]}, ["y"], 11, constants)
    result = _canonical(model)
    assert "SplitToSequence" not in ops(result)
    assert helper.get_node_attr_value(_node(result, "Split"), "split") == [1, 1, 1]


@pytest.mark.parametrize("opset", [11, 18])
def test_split_to_sequence_with_sizes_and_keepdims_0_is_kept(opset):
    """keepdims=0 with a split input: the spec ignores keepdims (inference keeps the axis),
    ONNX Runtime drops the axis; folding it crashed identity elimination (exit 3). Kept."""
    nodes = [
        helper.make_node("SplitToSequence", ["x", "one"], ["seq"], axis=0, keepdims=0),
        helper.make_node("SequenceAt", ["seq", "last"], ["y"]),
    ]
    constants = {"one": np.array(1, np.int64), "last": np.array(2, np.int64)}
    model = _sequence_model(nodes, {"x": [3, 4]}, ["y"], opset, constants)
    result = _canonical(model)
    assert "SplitToSequence" in ops(result)


def test_split_by_a_runtime_input_stays_a_sequence_op_before_opset_13():
    """Split sizes that are a graph input have no opset-12 spelling: the node is kept."""
    nodes = [
        helper.make_node("SplitToSequence", ["x", "sizes"], ["seq"]),
        helper.make_node("SequenceAt", ["seq", "zero"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "test",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [4]),
            helper.make_tensor_value_info("sizes", TensorProto.INT64, [2]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [helper.make_tensor("zero", TensorProto.INT64, [], [0])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 12)])
    model.ir_version = 7
    result = canonicalize(onnx.shape_inference.infer_shapes(model))
    onnx.checker.check_model(result, full_check=True)
    assert "SplitToSequence" in ops(result)
    feeds = {"x": np.arange(4, dtype=np.float32), "sizes": np.array([3, 1], np.int64)}
    np.testing.assert_array_equal(run(result, feeds)[0], [0, 1, 2])


def test_folded_shape_is_a_constant_value_tensor_at_opset_11():
    """Shape of a static input folds to a Constant with ``value`` (value_ints is opset 12)."""
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Reshape", ["y", "shape"], ["z"]),
        helper.make_node("Relu", ["z"], ["out"]),
    ]
    graph = helper.make_graph(
        nodes,
        "test",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3]),
            helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 2]),
        ],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [2, 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])
    model.ir_version = 6
    result = _canonical(model)
    assert "Shape" not in ops(result)
    constants = [n for n in result.graph.node if n.op_type == "Constant"]
    assert all(a.name == "value" for n in constants for a in n.attribute)


def test_min_max_are_not_fused_into_clip_with_inputs_before_opset_11():
    """Opset 10's Clip takes min/max as attributes, so FuseMinMaxToClip does not fire."""
    nodes = [
        helper.make_node("Max", ["x", "low"], ["m"]),
        helper.make_node("Min", ["m", "high"], ["y"]),
    ]
    bounds = {"low": np.array(-0.5), "high": np.array(0.5)}
    model = make_model(nodes, {"x": [2, 3]}, ["y"], bounds, opset=10, ir_version=5)
    result = _canonical(model)
    assert all(len(n.input) <= 1 for n in result.graph.node if n.op_type == "Clip")


@pytest.mark.parametrize(
    ("op_type", "inputs", "attributes", "version", "error"),
    [
        ("Gemm", 2, {}, 6, "Gemm-6 (the form in force at opset 6) takes 3 inputs, not 2"),
        ("Unsqueeze", 2, {}, 12, "Unsqueeze-11 (the form in force at opset 12) takes 1 input,"),
        ("Unsqueeze", 1, {}, 12, "Unsqueeze-11 (the form in force at opset 12) needs attribute"),
        ("Relu", 1, {"alpha": 1.0}, 14, "Relu-14 (the form in force at opset 14) has no attri"),
        ("Gelu", 1, {}, 17, "Gelu does not exist in opset 17"),
        ("Gemm", 2, {}, 11, None),
    ],
)
def test_form_error_names_what_the_opset_lacks(op_type, inputs, attributes, version, error):
    """The schema check behind the guard, one reason per kind of mismatch."""
    values = [ir.Value(name=f"in{i}") for i in range(inputs)]
    node = ir.Node(
        "", op_type, values, attributes=[ir.AttrFloat32(k, v) for k, v in attributes.items()]
    )
    found = form_error(node, version)
    if error is None:
        assert found is None
    else:
        assert found is not None and found.startswith(error)


def test_legalize_leaves_a_non_constant_axes_input_for_form_error():
    """Unsqueeze by a runtime axes input has no opset-12 spelling: left as it is, reported."""
    node = ir.Node("", "Unsqueeze", [ir.Value(name="x"), ir.Value(name="axes")])
    legalize(node, 12)
    assert len(node.inputs) == 2
    assert form_error(node, 12) is not None
