"""The canonical pipeline: constant folding limits, fixed point, instrumentation, real models.

Real models: every light architecture in the onnx wheel with random weights
(``randomized_light_model``). After the pipeline each keeps its outputs on ONNX Runtime (rtol
1e-4, atol 1e-5) — the softmax output and, because random weights often saturate the softmax,
also the logits feeding it — has no BatchNormalization left and has fewer nodes. zfnet512 is
the exception to "fewer": it has nothing to remove (no BN, Dropout, Sum, Identity or foldable
constant; its 22 nodes are Conv/Relu/LRN/MaxPool/Reshape/Gemm/Softmax), so it must keep 22.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from models import LIGHT_MODELS, randomized_light_model
from onnx import TensorProto, helper, numpy_helper
from pass_helpers import assert_same_outputs, make_model, ops

from edgec.compiler.canonicalize import canonicalize
from edgec.passes import pipeline_names, run_pipeline
from edgec.passes.instrument import PassInstrument, format_pass_table
from edgec.passes.pipelines import OUTPUT_LIMIT

# 60-140 M weights, or hundreds of nodes: several seconds each on the shared 2-core machine
SLOW = {"vgg19", "zfnet512", "bvlc_alexnet", "resnet50", "densenet121", "inception_v2"}
NOTHING_TO_REMOVE = {"zfnet512"}


def _ir(model: onnx.ModelProto) -> ir.Model:
    return ir.serde.deserialize_model(model)


def test_constant_of_shape_is_folded_only_below_the_size_limit():
    """A small ConstantOfShape becomes a constant; one above OUTPUT_LIMIT stays a recipe."""
    small, big = [4, 1, 1], [OUTPUT_LIMIT + 1]
    nodes = [
        helper.make_node("ConstantOfShape", ["small_shape"], ["c"], value=helper.make_tensor(
            "v", TensorProto.FLOAT, [1], [0.5])),
        helper.make_node("Add", ["x", "c"], ["y"]),
        helper.make_node("ConstantOfShape", ["big_shape"], ["z"], value=helper.make_tensor(
            "v", TensorProto.FLOAT, [1], [1.0])),
    ]  # fmt: skip
    inits = {"small_shape": np.array(small, np.int64), "big_shape": np.array(big, np.int64)}
    model = make_model(nodes, {"x": [1, 4, 3, 3]}, ["y", "z"], inits)
    after = canonicalize(model)
    assert ops(after).count("ConstantOfShape") == 1
    assert after.ByteSize() < 10_000  # the big tensor was not materialised
    assert_same_outputs(model, after)


def test_shape_derived_subgraph_folds_once_shapes_are_static():
    """Reshape(x, Concat(Shape(x)[0], -1)) folds to a constant shape: no Shape op remains."""
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
        helper.make_node("Unsqueeze", ["n", "axes"], ["n1"]),
        helper.make_node("Concat", ["n1", "minus_one"], ["target"], axis=0),
        helper.make_node("Reshape", ["x", "target"], ["r"]),
        helper.make_node("Relu", ["r"], ["y"]),
    ]
    inits = {
        "zero": np.array(0, np.int64),
        "axes": np.array([0], np.int64),
        "minus_one": np.array([-1], np.int64),
    }
    model = make_model(nodes, {"x": [2, 3, 4, 4]}, ["y"], inits)
    after = canonicalize(model)
    assert ops(after) == ["Reshape", "Relu"]
    shape = next(i for i in after.graph.initializer if i.name == after.graph.node[0].input[1])
    assert numpy_helper.to_array(shape).tolist() in ([2, -1], [2, 48])
    assert_same_outputs(model, after)


def test_pipeline_reaches_a_fixed_point_and_is_instrumented(tmp_path):
    """Run twice: the second run modifies nothing; records and IR dumps cover every pass run."""
    assert "canonical" in pipeline_names()
    model = _ir(randomized_light_model("squeezenet"))
    model.ir_version = 4
    instrument = PassInstrument(dump_dir=tmp_path / "ir")
    assert run_pipeline(model, "canonical", instrument=instrument)
    assert not run_pipeline(model, "canonical")
    records = instrument.records
    assert {r.name for r in records} >= {"FoldBatchNormPass", "EliminateDropoutPass"}
    assert records[0].nodes_before == 66 and records[-1].nodes_after == 65  # Dropout gone
    dumps = sorted((tmp_path / "ir").glob("*.onnx"))
    assert len(dumps) == len(records)
    assert "EliminateDropoutPass" in dumps[1].name
    assert len(onnx.load(dumps[-1]).graph.node) == 65
    table = format_pass_table(records)
    assert "EliminateDropoutPass" in table and "nodes 66 -> 65" in table


def _with_logits(model: onnx.ModelProto) -> onnx.ModelProto:
    """Also expose the input of the final Softmax as a graph output."""
    softmax = [n for n in model.graph.node if n.op_type == "Softmax"]
    if softmax:
        logits = softmax[-1].input[0]
        model.graph.output.append(helper.make_tensor_value_info(logits, TensorProto.FLOAT, None))
    return model


def _data_input(model: onnx.ModelProto) -> onnx.ValueInfoProto:
    """The real input (IR 3 models also list every initializer as an input)."""
    inits = {i.name for i in model.graph.initializer}
    return next(i for i in model.graph.input if i.name not in inits)


def _outputs(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    return session.run(None, {_data_input(model).name: x})


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in LIGHT_MODELS]
)
def test_light_model_keeps_its_outputs_loses_bn_and_shrinks(name):
    """Randomised light model through canonicalize: same outputs, no BN, fewer nodes."""
    model = _with_logits(randomized_light_model(name))
    before = len(model.graph.node)
    shape = [d.dim_value for d in _data_input(model).type.tensor_type.shape.dim]
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    expected = _outputs(model, x)
    after = canonicalize(model)
    assert "BatchNormalization" not in ops(after)
    if name in NOTHING_TO_REMOVE:
        assert len(after.graph.node) == before
    else:
        assert len(after.graph.node) < before
    actual = _outputs(after, x)
    for got, want in zip(actual, expected, strict=True):
        assert np.abs(want).max() > 1e-6
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
