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

from edgec.compiler.accuracy_guard import sqnr_db
from edgec.errors import BadInputError
from edgec.passes.quantize import (
    Int8Flavour,
    QuantizeInt8Pass,
    calibrate,
    preprocess,
    quantize_model,
)


def run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
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
