"""Empirical bias correction: the mean output error of the layers it touches goes down.

The model is the MobileNet-style net of ``test_equalize`` (channels with ranges spread over
three decades, so per-tensor INT8 shifts their means a lot), quantized u8s8 per-tensor with
ONNX Runtime's tools. The correction uses calibration inputs; the error is measured on other
(held-out) inputs: per layer, the largest |mean over inputs and positions| of the difference
between the Q/DQ and the FP32 layer output, per output channel.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from pass_helpers import make_model
from test_equalize import _mobilenet_like

from edgec.errors import BadInputError
from edgec.passes import bias_correction
from edgec.passes.bias_correction import channel_means, correct_biases
from edgec.passes.layer_io import StepwiseRun
from edgec.passes.quantize import Int8Flavour, calibrate, preprocess, quantize_model

SPREAD = 1.5
FLAVOUR = Int8Flavour(per_channel=False, reduce_range=True)


def _inputs(seed: int, n: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, 8, 8)).astype(np.float32)


@pytest.fixture(scope="module")
def quantized():
    pre = preprocess(_mobilenet_like(spread=SPREAD))
    calibration = _inputs(0, 64)
    table = calibrate(pre, calibration)
    qdq = quantize_model(pre, table, FLAVOUR)
    return pre, qdq, calibration


def _mean_errors(pre, qdq, x) -> dict[str, float]:
    """Per Conv node name: largest |per-channel mean of (Q/DQ output - FP32 output)|."""
    fp32_out = {n.name: n.output[0] for n in pre.graph.node if n.op_type == "Conv"}
    q_out = {n.name: n.output[0] for n in qdq.graph.node if n.op_type == "Conv"}
    want = channel_means(pre, dict.fromkeys(fp32_out.values(), 1), x)
    got = channel_means(qdq, dict.fromkeys(q_out.values(), 1), x)
    return {name: float(np.max(np.abs(got[q_out[name]] - want[fp32_out[name]]))) for name in q_out}


def test_mean_output_error_drops_on_held_out_inputs(quantized, caplog):
    """Every Conv is corrected (two get a bias they lacked); on held-out inputs the mean
    error of each layer that had one above 0.01 at least halves (the stem's, ~0.001, is below
    one step of its int32 bias, ~0.0014, so it cannot move), and the total drops by half."""
    pre, qdq, calibration = quantized
    with caplog.at_level(logging.INFO, logger="edgec.passes.bias_correction"):
        corrected, done = correct_biases(pre, qdq, calibration)
    assert [c.node for c in done] == ["stem", "dw1", "pw1", "pw2", "dw2", "head"]
    assert {c.node for c in done if c.added_bias} == {"pw2", "head"}
    assert any("6 of 6 quantized layers corrected" in r.getMessage() for r in caplog.records)
    onnx.checker.check_model(corrected)
    held_out = _inputs(1, 64)
    before, after = _mean_errors(pre, qdq, held_out), _mean_errors(pre, corrected, held_out)
    assert sum(before[name] > 0.01 for name in before) == 5
    for name in before:
        if before[name] > 0.01:
            assert after[name] < 0.5 * before[name], (name, before[name], after[name])
    assert sum(after.values()) < 0.5 * sum(before.values()), (before, after)


def test_model_output_error_drops_with_integer_kernels(quantized):
    """Run as shipped (full ORT optimisation, integer kernels), the corrected model's output is
    closer to FP32 on held-out inputs: the mean squared error drops (a little: per-tensor
    INT8's random error dominates it, and the correction takes out only the mean part)."""
    pre, qdq, calibration = quantized
    corrected, _ = correct_biases(pre, qdq, calibration)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(
        corrected.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    x = _inputs(2, 64)
    fp32 = ort.InferenceSession(pre.SerializeToString(), providers=["CPUExecutionProvider"])
    plain = ort.InferenceSession(
        qdq.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    want = np.concatenate([fp32.run(None, {"x": x[i : i + 2]})[0] for i in range(0, 64, 2)])
    errors = {}
    for label, s in (("plain", plain), ("corrected", session)):
        got = np.concatenate([s.run(None, {"x": x[i : i + 2]})[0] for i in range(0, 64, 2)])
        errors[label] = float(np.mean((got - want) ** 2))
    assert errors["corrected"] < 0.99 * errors["plain"], errors


def test_corrected_model_fuses(quantized, tmp_path):
    """ORT's optimised graph of the corrected model has no float Conv (all QLinearConv)."""
    pre, qdq, calibration = quantized
    corrected, _ = correct_biases(pre, qdq, calibration)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(corrected.SerializeToString(), options, providers=["CPUExecutionProvider"])
    op_types = [n.op_type for n in onnx.load(tmp_path / "opt.onnx").graph.node]
    assert "Conv" not in op_types and op_types.count("QLinearConv") == 6, op_types


def test_bad_samples_are_refused(quantized):
    """Samples of the wrong shape: one BadInputError sentence, not an ORT traceback."""
    pre, qdq, _ = quantized
    with pytest.raises(BadInputError, match="shape"):
        correct_biases(pre, qdq, np.zeros((4, 3, 5, 5), np.float32))


def test_quantize_step_option_applies_the_correction(quantized):
    """``Int8Flavour(bias_correction=True)`` makes quantize_model return the corrected model
    (named ``...-bias-corrected``); without calibration samples it is a caller bug."""
    pre, qdq, calibration = quantized
    table = calibrate(pre, calibration)
    flavour = Int8Flavour(per_channel=False, reduce_range=True, bias_correction=True)
    assert flavour.name == "u8s8-per-tensor-reduce-range-bias-corrected"
    assert flavour.to_json()["bias_correction"] is True
    via_option = quantize_model(pre, table, flavour, samples=calibration)
    direct, _ = correct_biases(pre, qdq, calibration)
    biases = {
        i.name: numpy_helper.to_array(i)
        for i in direct.graph.initializer
        if i.data_type == TensorProto.INT32
    }
    got = {
        i.name: numpy_helper.to_array(i)
        for i in via_option.graph.initializer
        if i.data_type == TensorProto.INT32
    }
    assert biases.keys() == got.keys() and len(biases) == 12  # 6 biases + 6 zero points
    for name, value in biases.items():
        np.testing.assert_array_equal(got[name], value)
    with pytest.raises(ValueError, match="needs the calibration samples"):
        quantize_model(pre, table, flavour)


def test_requantizing_with_a_layer_kept_fp32_measures_only_the_layers_after_it(
    quantized, monkeypatch
):
    """The accuracy guard re-quantizes with layers kept FP32: a correction then measures
    again only the layers downstream of the one kept (pw2 kept: dw2 and head), reusing the
    cached means of stem, dw1 and pw1; the biases come out the same as measured from
    scratch."""
    pre, _, calibration = quantized
    table = calibrate(pre, calibration)
    flavour = Int8Flavour(per_channel=False, reduce_range=True)
    correct_biases(pre, quantize_model(pre, table, flavour), calibration)  # fills the cache
    kept = quantize_model(pre, table, flavour, ["pw2"])
    measured = []
    real = StepwiseRun.values

    def counting(self, names):
        measured.append(list(names))
        return real(self, names)

    monkeypatch.setattr(StepwiseRun, "values", counting)
    cached, done = correct_biases(pre, kept, calibration)
    assert [c.node for c in done] == ["stem", "dw1", "pw1", "dw2", "head"]
    assert len(measured) == 2, measured  # dw2, head
    monkeypatch.setattr(bias_correction, "_CACHE", type(bias_correction._CACHE)())
    fresh, _ = correct_biases(pre, kept, calibration)
    assert len(measured) == 2 + 5
    for a, b in zip(cached.graph.initializer, fresh.graph.initializer, strict=True):
        assert a.SerializeToString() == b.SerializeToString()


@pytest.mark.parametrize(
    ("shape", "count"), [((300, 3, 224, 224), 32), ((300, 3, 8, 8), 128), ((20, 3, 8, 8), 20)]
)
def test_big_inputs_are_corrected_on_fewer_samples(shape, count):
    """At most 128 samples, and for a 224x224 image 32 (thousands of positions per channel
    each): bias correction of a deep ImageNet model stays bounded."""
    assert bias_correction.sample_count(np.broadcast_to(np.float32(0), shape)) == count


def _hard_sigmoid_gate() -> onnx.ModelProto:
    """conv1 -> Relu -> conv2 -> HardSigmoid -> conv3: conv2's output is read only by the
    HardSigmoid, so quantization folds the HardSigmoid's shift (beta / alpha = 3) into conv2's
    bias, as in MobileNetV3's squeeze-and-excitation gates."""
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2"),
        helper.make_node("HardSigmoid", ["c2"], ["g"], name="gate", alpha=1 / 6, beta=0.5),
        helper.make_node("Conv", ["g", "w3", "b3"], ["y"], name="conv3"),
    ]
    inits = {
        "w1": rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.3,
        "b1": rng.standard_normal(8).astype(np.float32) * 0.1,
        "w2": rng.standard_normal((8, 8, 1, 1)).astype(np.float32) * 0.5,
        "b2": rng.standard_normal(8).astype(np.float32) * 0.1,
        "w3": rng.standard_normal((4, 8, 1, 1)).astype(np.float32) * 0.5,
        "b3": rng.standard_normal(4).astype(np.float32) * 0.1,
    }
    return make_model(nodes, {"x": [1, 3, 8, 8]}, ["y"], inits)


def test_a_folded_hard_sigmoid_shift_is_not_corrected_away():
    """MobileNetV3 lost 8 dB of output SQNR to bias correction: it took the HardSigmoid shift
    quantization folds into a Conv's bias for a mean error and removed it. Now the folded
    Conv is measured against FP32 plus that shift: its bias moves by far less than the shift
    (3 / bias scale steps), and the corrected model is no further from FP32 than before."""
    pre = preprocess(_hard_sigmoid_gate())
    calibration, held_out = _inputs(0, 64), _inputs(1, 64)
    qdq = quantize_model(pre, calibrate(pre, calibration), FLAVOUR)
    folded = next(n for n in qdq.graph.node if n.name == "conv2")
    assert folded.output[0].endswith("_shifted")  # the fold happened
    corrected, done = correct_biases(pre, qdq, calibration)
    assert "conv2" in {c.node for c in done}
    assert next(c for c in done if c.node == "conv2").max_shift < 0.5

    def outputs(model):
        session = ort.InferenceSession(
            model.SerializeToString(), providers=["CPUExecutionProvider"]
        )
        return np.concatenate([session.run(None, {"x": x[None]})[0] for x in held_out])

    want = outputs(pre)
    error = {k: np.mean((outputs(m) - want) ** 2) for k, m in (("q", qdq), ("c", corrected))}
    assert error["c"] <= 1.05 * error["q"], error
