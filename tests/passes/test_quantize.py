"""QuantizeInt8Pass and its helpers: ONNX Runtime's pre-processing, calibration and QDQ
quantization, checked numerically on ONNX Runtime, and bad calibration data refused."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from models import tiny_conv_model
from onnx import TensorProto, helper, numpy_helper

from edgec.compiler.int8.accuracy_guard import sqnr_db
from edgec.errors import BadInputError
from edgec.passes.qdq_hard_sigmoid import fold_hard_sigmoid
from edgec.passes.quantize import (
    Int8Flavour,
    QuantizeInt8Pass,
    calibrate,
    preprocess,
    quantize_model,
    stem_nodes,
)


def run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    """Run ``model`` on each sample with ORT's exact integer kernels: what is checked here is
    the pass's quantization error, on any x86 CPU. (Without VNNI, ORT's default u8s8 kernels
    saturate int16 sums, which costs this CNN ~10 dB SQNR; with VNNI they are exact.)"""
    options = ort.SessionOptions()
    options.add_session_config_entry("session.x64quantprecision", "1")
    session = ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    return np.concatenate([session.run(None, {"input": x[i : i + 1]})[0] for i in range(len(x))])


@pytest.fixture(scope="module")
def prepared():
    """The tiny CNN pre-processed and calibrated on 64 random images."""
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (96, 3, 16, 16)).astype(np.float32)
    model = preprocess(tiny_conv_model())
    return model, calibrate(model, x[:64], "minmax"), x[64:]


def zero_point_types(model: onnx.ModelProto) -> set[int]:
    inits = {i.name: i for i in model.graph.initializer}
    return {
        inits[n.input[2]].data_type
        for n in model.graph.node
        if n.op_type == "QuantizeLinear" and n.input[2] in inits
    }


def test_preprocess_names_every_node_and_leaves_its_input_untouched():
    model = tiny_conv_model()
    model.graph.node[1].name = ""
    before = model.SerializeToString()
    result = preprocess(model)
    assert model.SerializeToString() == before
    names = [n.name for n in result.graph.node]
    assert all(names) and len(set(names)) == len(names)


@pytest.mark.parametrize("method", ["minmax", "entropy", "percentile"])
def test_calibration_records_a_finite_range_for_every_activation(prepared, method):
    model, _, x = prepared
    table = calibrate(model, x, method)
    assert table.method == method and table.samples == len(x)
    assert {"input", "logits"} <= set(table.ranges)
    for low, high in table.ranges.values():
        assert np.isfinite([low, high]).all() and low <= high
    low, high = table.ranges["input"]
    assert 0.0 <= low < 0.1 and 0.9 < high <= 1.0  # the inputs are uniform in [0, 1)


@pytest.mark.parametrize(
    ("flavour", "zero_point_type"),
    [
        (Int8Flavour("uint8", per_channel=True), TensorProto.UINT8),
        (Int8Flavour("int8", per_channel=False), TensorProto.INT8),
    ],
)
def test_pass_quantizes_to_qdq_that_matches_fp32_within_tolerance(
    prepared, flavour, zero_point_type
):
    """The QDQ model's logits stay within 30 dB SQNR of FP32 on inputs it was not calibrated on."""
    model, table, x = prepared
    result = QuantizeInt8Pass(table, flavour)(ir.serde.deserialize_model(model))
    assert result.modified
    quantized = ir.serde.serialize_model(result.model)
    ops = [n.op_type for n in quantized.graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    assert zero_point_types(quantized) == {zero_point_type}
    assert sqnr_db(run(model, x), run(quantized, x)) > 30.0


def test_per_channel_weights_get_one_scale_per_output_channel(prepared):
    model, table, _ = prepared
    quantized = quantize_model(model, table, Int8Flavour(per_channel=True))
    inits = {i.name: numpy_helper.to_array(i) for i in quantized.graph.initializer}
    conv = next(n for n in quantized.graph.node if n.op_type == "Conv")
    weight_dq = next(n for n in quantized.graph.node if n.output[0] == conv.input[1])
    assert weight_dq.op_type == "DequantizeLinear"
    assert inits[weight_dq.input[1]].shape == (8,)


def test_excluded_node_stays_fp32(prepared):
    model, table, _ = prepared
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    quantized = quantize_model(model, table, Int8Flavour(), nodes_to_exclude=[conv.name])
    kept = next(n for n in quantized.graph.node if n.name == conv.name)
    producers = {o: n.op_type for n in quantized.graph.node for o in n.output}
    assert producers.get(kept.input[1]) is None  # the float weight, not a DequantizeLinear
    assert "QuantizeLinear" in {n.op_type for n in quantized.graph.node}  # the Gemm still is


def test_model_with_nothing_to_quantize_is_reported_unmodified():
    graph = helper.make_graph(
        [helper.make_node("Relu", ["input"], ["y"], name="relu")],
        "relu",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    x = np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32)
    result = QuantizeInt8Pass(calibrate(model, x))(ir.serde.deserialize_model(model))
    assert not result.modified


@pytest.mark.parametrize(
    ("samples", "fragment"),
    [
        (np.full((8, 3, 16, 16), np.nan, np.float32), "NaN"),
        (np.zeros((8, 3, 8, 8), np.float32), "shape"),
        (np.ones((8, 3, 16, 16), np.float32), "no variation"),
        (np.array([["a"]]), "numeric"),
    ],
)
def test_bad_calibration_data_gets_one_clear_sentence(prepared, samples, fragment):
    model, _, _ = prepared
    with pytest.raises(BadInputError, match=fragment) as info:
        calibrate(model, samples)
    assert str(info.value).endswith(".") and "\n" not in str(info.value)


def test_unknown_calibration_method_is_refused(prepared):
    model, _, x = prepared
    with pytest.raises(BadInputError, match="minmax, entropy, percentile"):
        calibrate(model, x, "kl")


def hard_swish_se_model() -> onnx.ModelProto:
    """Conv -> HardSwish (as x * HardSigmoid(x)) -> squeeze-excitation gated by HardSigmoid of a
    bias-free 1x1 Conv -> GlobalAveragePool -> Flatten -> Gemm, input 'input' [1,3,16,16]."""
    rng = np.random.default_rng(1)
    inits = [
        numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "b"),
        numpy_helper.from_array(rng.standard_normal((8, 8, 1, 1)).astype(np.float32), "se_w"),
        numpy_helper.from_array(rng.standard_normal((4, 8)).astype(np.float32), "fc_w"),
        numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "fc_b"),
    ]
    swish = {"alpha": 1.0 / 6, "beta": 0.5}
    nodes = [
        helper.make_node("Conv", ["input", "w", "b"], ["c"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("HardSigmoid", ["c"], ["hs"], name="hs", **swish),
        helper.make_node("Mul", ["c", "hs"], ["act"], name="hardswish"),
        helper.make_node("GlobalAveragePool", ["act"], ["squeeze"], name="squeeze"),
        helper.make_node("Conv", ["squeeze", "se_w"], ["excite"], name="se_conv"),
        helper.make_node("HardSigmoid", ["excite"], ["gate"], name="gate", alpha=0.2, beta=0.4),
        helper.make_node("Mul", ["act", "gate"], ["scaled"], name="scale"),
        helper.make_node("GlobalAveragePool", ["scaled"], ["p"], name="pool"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["logits"], transB=1, name="fc"),
    ]
    graph = helper.make_graph(
        nodes,
        "hardswish_se",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 4])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def optimized_op_types(model: onnx.ModelProto, tmp_path) -> set[str]:
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return {n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node}


@pytest.mark.parametrize(
    "flavour", [Int8Flavour("uint8", per_channel=True), Int8Flavour("int8", per_channel=False)]
)
def test_hard_sigmoid_runs_as_integer_ops_and_keeps_accuracy(flavour, tmp_path):
    """ORT has no integer HardSigmoid: unfolded, each one runs DQ -> float HardSigmoid -> Q.
    Folded, the HardSwish's becomes an Add (QLinearAdd with u8 activations) and the SE gate's
    vanishes into its Conv's bias; no float HardSigmoid is left after ORT's optimisation, and
    the logits stay close to FP32."""
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (96, 3, 16, 16)).astype(np.float32)
    model = preprocess(hard_swish_se_model())
    quantized = quantize_model(model, calibrate(model, x[:64]), flavour)
    ops = [n.op_type for n in quantized.graph.node]
    assert "HardSigmoid" not in ops and ops.count("Add") == 1  # the gate went into the bias
    se_conv = next(n for n in quantized.graph.node if n.name == "se_conv")
    assert len(se_conv.input) == 3  # a bias was created for the bias-free Conv
    optimized = optimized_op_types(quantized, tmp_path)
    assert "HardSigmoid" not in optimized
    if flavour.activations == "uint8":  # ORT's x86 kernels fuse u8 activations, not s8
        assert "QLinearAdd" in optimized
    assert sqnr_db(run(model, x[64:]), run(quantized, x[64:])) > 25.0


def test_folded_hard_sigmoid_equals_hard_sigmoid_quantized_on_its_output_range():
    """DQ -> HardSigmoid -> Q over [0, 1] and its folded form agree to one 8-bit step."""

    def scalar(value, dtype, name):
        return numpy_helper.from_array(np.array(value, dtype), name)

    inits = [
        scalar(0.05, np.float32, "x_scale"),
        scalar(120, np.uint8, "x_zero"),
        scalar(1 / 255, np.float32, "y_scale"),
        scalar(0, np.uint8, "y_zero"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["input", "x_scale", "x_zero"], ["xq"], name="qx"),
        helper.make_node("DequantizeLinear", ["xq", "x_scale", "x_zero"], ["xd"], name="dqx"),
        helper.make_node("HardSigmoid", ["xd"], ["h"], name="hs", alpha=1 / 6, beta=0.5),
        helper.make_node("QuantizeLinear", ["h", "y_scale", "y_zero"], ["hq"], name="qh"),
        helper.make_node("DequantizeLinear", ["hq", "y_scale", "y_zero"], ["y"], name="dqh"),
    ]
    graph = helper.make_graph(
        nodes,
        "hs",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 1001])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1001])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    folded = onnx.ModelProto()
    folded.CopyFrom(model)
    assert fold_hard_sigmoid(folded) == 1
    assert "HardSigmoid" not in {n.op_type for n in folded.graph.node}
    x = np.linspace(-6, 6, 1001, dtype=np.float32)[None]
    reference, result = run(model, x), run(folded, x)
    assert result.min() == 0.0 and result.max() == 1.0
    np.testing.assert_allclose(result, reference, atol=1 / 255 + 1e-6)


def test_the_stem_is_the_first_layer_on_the_input_and_its_activation():
    """``fp32_stem`` keeps Conv -> HardSwish (as pre-processing splits it) in FP32, and only
    them: the next Conv, which reads the stem's output, is quantized."""
    rng = np.random.default_rng(0)
    w0 = numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype("f4") * 0.2, "w0")
    w1 = numpy_helper.from_array(rng.standard_normal((8, 8, 3, 3)).astype("f4") * 0.1, "w1")
    nodes = [
        helper.make_node("Transpose", ["input"], ["xt"], perm=[0, 3, 1, 2], name="to_nchw"),
        helper.make_node("Conv", ["xt", "w0"], ["c0"], pads=[1] * 4, name="stem_conv"),
        helper.make_node("HardSwish", ["c0"], ["h0"], name="stem_act"),
        helper.make_node("Conv", ["h0", "w1"], ["c1"], pads=[1] * 4, name="body_conv"),
        helper.make_node("Relu", ["c1"], ["y"], name="body_act"),
    ]
    graph = helper.make_graph(
        nodes,
        "stem",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 16, 16, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 16, 16])],
        [w0, w1],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    pre = preprocess(model)
    stem = stem_nodes(pre)
    ops = {n.name: n.op_type for n in pre.graph.node}
    assert stem[0] == "stem_conv" and "body_conv" not in stem
    assert {ops[name] for name in stem[1:]} <= {"HardSigmoid", "Mul", "HardSwish"}
    x = rng.standard_normal((96, 16, 16, 3)).astype(np.float32)
    flavour = Int8Flavour(fp32_stem=True)
    assert flavour.name == "u8s8-per-channel-fp32-stem"
    q = quantize_model(pre, calibrate(pre, x[:64]), flavour)
    dequantized = {n.output[0] for n in q.graph.node if n.op_type == "DequantizeLinear"}
    int8_convs = {n.name for n in q.graph.node if n.op_type == "Conv" and n.input[0] in dequantized}
    assert int8_convs == {"body_conv"}
    assert sqnr_db(run(pre, x[64:]), run(q, x[64:])) > 25.0
