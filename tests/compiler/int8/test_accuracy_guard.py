"""The INT8 accuracy guard: its verdict, the per-tensor error ranking, and the repair that
keeps a deliberately fragile layer (a huge activation outlier) in FP32."""

from __future__ import annotations

import itertools

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from int8_helpers import fragile_teacher
from onnx import numpy_helper

from edgec.compiler.int8 import precision
from edgec.compiler.int8.accuracy_guard import (
    MIN_CONFIDENT,
    fp32_activations,
    input_noise,
    judge,
    rank_tensors,
    repair,
    sqnr_db,
    tensor_error_db,
)
from edgec.compiler.int8.precision import PrecisionOptions, decide_precision
from edgec.compiler.report.markdown import int8_fp32_lines
from edgec.data import load_dataset
from edgec.errors import GateFailedError
from edgec.passes.bias_correction import correct_biases
from edgec.passes.quantize import Int8Flavour, calibrate, preprocess, quantize_model
from edgec.targets import load_target


def confident_logits(n: int, classes: int = 10, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 0.1, (n, classes))
    logits[np.arange(n), rng.integers(0, classes, n)] += 8.0  # softmax top-1 > 0.99
    return logits


def test_with_labels_the_verdict_is_the_accuracy_drop_in_points():
    fp32 = confident_logits(100)
    labels = fp32.argmax(axis=1)
    int8 = fp32.copy()
    int8[:2] = -int8[:2]  # two answers flip: 100% -> 98%
    verdict = judge(fp32, int8, labels, max_drop_points=1.0, min_sqnr_db=99.0)
    assert verdict.basis == "accuracy" and verdict.min_sqnr_db is None
    assert verdict.fp32_accuracy == 1.0 and verdict.int8_accuracy == 0.98
    assert verdict.drop_points == pytest.approx(2.0) and not verdict.passed
    assert judge(fp32, int8, labels, 2.0, 99.0).passed  # the SQNR floor is for unlabelled data


def test_without_labels_agreement_counts_only_where_fp32_is_confident():
    """30 confident inputs with 1 flip (3.3 points) fail a 1-point tolerance; 70 near-ties that
    all flip under tiny noise do not count."""
    rng = np.random.default_rng(1)
    confident = confident_logits(30)
    ties = rng.normal(0, 1e-3, (70, 10))
    fp32 = np.concatenate([confident, ties])
    int8 = fp32 + rng.normal(0, 1e-2, fp32.shape)
    int8[0] = -int8[0]
    verdict = judge(fp32, int8, None, max_drop_points=1.0, min_sqnr_db=0.0)
    assert verdict.basis == "confident-agreement+sqnr"
    assert verdict.confident_samples == 30
    assert verdict.drop_points == pytest.approx(100 / 30)
    assert verdict.agreement < 0.5  # plain agreement is dominated by the near-ties
    assert not verdict.passed
    assert judge(fp32, int8, None, max_drop_points=4.0, min_sqnr_db=0.0).passed


def moderate_logits(n: int, seed: int = 0) -> np.ndarray:
    """Inputs where FP32 is moderately sure: softmax top-1 about 0.7 (>= 0.5, < 0.9)."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 0.05, (n, 10))
    logits[np.arange(n), rng.integers(0, 10, n)] += 3.0
    return logits


def _flip(logits: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """A copy whose top-1 moves to another class on ``rows``."""
    out = logits.copy()
    top = logits.argmax(axis=1)
    out[rows, (top[rows] + 1) % logits.shape[1]] += 6.0
    return out


def test_flipping_five_percent_of_moderately_confident_inputs_fails_the_guard():
    """400 inputs where FP32's top-1 is ~0.7: none counts as confident (>= 0.9), so the
    confident check cannot judge them; INT8 flipping 20 of them (5%) must still fail, since
    FP32 itself flips none of them under 8-bit input noise."""
    fp32 = moderate_logits(400)
    int8 = _flip(fp32, np.arange(0, 400, 20))
    verdict = judge(fp32, int8, None, max_drop_points=1.0, min_sqnr_db=0.0, fp32_noisy_logits=fp32)
    assert verdict.confident_samples == 0 and verdict.moderate_samples == 400
    assert verdict.moderate_agreement == pytest.approx(0.95)
    assert verdict.noise_agreement == 1.0 and verdict.moderate_max_drop_points == 1.0
    assert not verdict.passed
    assert "95.00% agreement on 400 inputs with FP32 top-1 >= 0.5" in verdict.summary()
    record = verdict.to_json()
    assert record["moderate_agreement"] == 0.95 and record["noise_agreement"] == 1.0


def test_with_labels_flips_that_cancel_in_accuracy_still_fail_on_moderate_inputs():
    """10 right answers turned wrong and 10 wrong ones turned right: no accuracy drop, yet 5%
    of the moderately confident answers changed."""
    fp32 = moderate_logits(400, seed=3)
    top = fp32.argmax(axis=1)
    labels = top.copy()
    labels[:10] = (top[:10] + 1) % 10  # FP32 is wrong on these; the flip makes them right
    int8 = _flip(fp32, np.r_[np.arange(10), np.arange(100, 110)])
    verdict = judge(fp32, int8, labels, 1.0, 0.0, fp32_noisy_logits=fp32)
    assert verdict.drop_points == pytest.approx(0.0)
    assert verdict.moderate_agreement == pytest.approx(0.95) and not verdict.passed


def test_the_noise_floor_forgives_flips_fp32_itself_makes_under_input_noise():
    """A model that flips 6% of its moderate answers under one 8-bit step of input noise is
    allowed 1 + 6 points there: the same 5% INT8 flips then pass."""
    fp32 = moderate_logits(400)
    int8 = _flip(fp32, np.arange(0, 400, 20))
    noisy = _flip(fp32, np.arange(24))
    verdict = judge(fp32, int8, None, 1.0, 0.0, fp32_noisy_logits=noisy)
    assert verdict.noise_agreement == pytest.approx(0.94)
    assert verdict.moderate_max_drop_points == pytest.approx(7.0) and verdict.passed


def test_input_noise_is_one_8bit_step_of_the_reference_range_and_seeded():
    reference = np.linspace(-1.0, 2.0, 1000).reshape(10, 100).astype(np.float32)
    x = np.zeros((50, 100), np.float32)
    noisy = input_noise(x, reference, seed=4)
    assert noisy.dtype == np.float32
    assert np.abs(noisy).max() <= 3.0 / 255 / 2 + 1e-7
    assert np.abs(noisy).max() > 0.9 * 3.0 / 255 / 2
    assert np.array_equal(noisy, input_noise(x, reference, seed=4))


def test_without_confident_inputs_only_the_sqnr_floor_decides():
    rng = np.random.default_rng(2)
    fp32 = rng.normal(0, 0.01, (MIN_CONFIDENT * 3, 1000))
    int8 = fp32 + rng.normal(0, 0.001, fp32.shape)  # 20 dB
    verdict = judge(fp32, int8, None, max_drop_points=1.0, min_sqnr_db=15.0)
    assert verdict.basis == "sqnr" and verdict.drop_points is None
    assert verdict.sqnr_db == pytest.approx(20.0, abs=0.3) and verdict.passed
    assert not judge(fp32, int8, None, max_drop_points=1.0, min_sqnr_db=25.0).passed


def test_exact_int8_reports_a_finite_capped_sqnr():
    x = np.ones((4, 3))
    assert sqnr_db(x, x) == 200.0


def test_outlier_channel_scores_badly_though_its_whole_tensor_sqnr_looks_fine():
    """One channel 1000x larger: an 8-bit per-tensor grid keeps it and zeroes the others. The
    whole-tensor SQNR (dominated by the outlier) stays high; the per-channel score does not."""
    rng = np.random.default_rng(3)
    x = np.abs(rng.normal(0, 1, (8, 16, 6, 6)))
    x[:, 0] *= 1000.0
    step = x.max() / 255.0
    fake_quantized = np.round(x / step) * step
    assert sqnr_db(x, fake_quantized) > 30.0
    assert tensor_error_db(x, fake_quantized) < 5.0


@pytest.fixture(scope="module")
def fragile():
    model, conv = fragile_teacher()
    return model, conv, load_dataset("digits")


def test_ranking_puts_the_outlier_activation_first(fragile):
    model, conv, data = fragile
    pre = preprocess(model)
    qdq = quantize_model(pre, calibrate(pre, data.x_train[:200]), Int8Flavour())
    ranking = rank_tensors(qdq, fp32_activations(pre, data.x_val))
    worst = ranking[0]
    conv_output = next(n.output[0] for n in pre.graph.node if n.name == conv)
    relu = next(n for n in pre.graph.node if conv_output in n.input)
    assert worst.tensor in (conv_output, relu.output[0])
    assert worst.sqnr_db < 3.0 < ranking[len(ranking) // 2].sqnr_db


@pytest.fixture
def plain_host_search(monkeypatch):
    """Limit the host search to the flavours without cross-layer equalization, which removes
    the fragile teacher's outlier exactly (see
    test_equalization_rescues_the_fragile_teacher_with_no_layer_in_fp32), and without the
    AdaRound flavour it adds when none passes (which equalizes too), so the guard's own work
    stays tested."""
    candidates = precision.host_candidates
    monkeypatch.setattr(
        precision, "host_candidates", lambda t: [f for f in candidates(t) if not f.equalize]
    )
    monkeypatch.setattr(precision, "rescue_flavours", lambda target, equalize: [])


@pytest.mark.slow
def test_guard_keeps_the_fragile_layer_fp32_and_meets_the_tolerance(fragile, plain_host_search):
    """Fully quantized, the fragile teacher loses ~80 points; the guard keeps the outlier conv
    (and the neighbours that would quantize its output) in FP32 and the drop is back under 1
    point, while the rest of the network stays INT8."""
    model, conv, data = fragile
    options = PrecisionOptions(requested="int8", compare_seconds=0.2)
    decision = decide_precision(model, load_target("host"), "onnxruntime", data, options)
    assert decision.precision == "int8"
    assert conv in decision.fp32_layers
    assert len(decision.fp32_layers) <= 4
    assert decision.verdict.passed and decision.verdict.drop_points <= 1.0
    assert decision.repair_steps and decision.repair_steps[0]["tensor_sqnr_db"] < 3.0
    assert all(not c["passed"] for c in decision.candidates)  # every flavour broke first
    quantized_ops = {n.op_type for n in decision.model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= quantized_ops
    kept = {n.name for n in decision.model.graph.node if n.name in decision.fp32_layers}
    assert kept == set(decision.fp32_layers)


@pytest.mark.slow
def test_bundle_report_names_the_layers_kept_fp32_and_the_error_each_would_add(
    fragile, plain_host_search
):
    """Each guard step records the output SQNR with its nodes quantized and kept FP32 (the
    error they would add back), and the bundle's report lists every layer kept FP32 with
    those numbers: the steps together gain more than 10 dB."""
    model, conv, data = fragile
    options = PrecisionOptions(requested="int8", compare_seconds=0.2)
    decision = decide_precision(model, load_target("host"), "onnxruntime", data, options)
    steps = decision.repair_steps
    first = steps[0]
    # Each step starts from where the one before ended; all together they recover > 10 dB.
    for before, after in itertools.pairwise(steps):
        assert after["output_sqnr_db_quantized"] == before["output_sqnr_db_kept_fp32"]
    assert steps[-1]["output_sqnr_db_kept_fp32"] > first["output_sqnr_db_quantized"] + 10.0
    stage = {"name": "teacher", **decision.manifest_fields()}
    text = "\n".join(int8_fp32_lines([stage]))
    assert "### INT8 layers kept FP32 in `teacher`" in text and f"`{conv}`" in text
    for node in decision.fp32_layers:
        assert f"`{node}`" in text
    assert f"{first['output_sqnr_db_quantized']:.1f} dB with them quantized" in text


@pytest.mark.slow
def test_equalization_rescues_the_fragile_teacher_with_no_layer_in_fp32(fragile):
    """The fragile teacher's outlier (conv 1's channel 0 scaled 1000x, conv 2's input channel
    scaled back) is what cross-layer equalization undoes: every plain flavour loses ~89 points,
    the equalized ones pass with no layer kept in FP32, and the host search picks one."""
    model, _, data = fragile
    options = PrecisionOptions(requested="int8", compare_seconds=0.2)
    decision = decide_precision(model, load_target("host"), "onnxruntime", data, options)
    assert decision.precision == "int8"
    verdicts = {c["flavour"]: c for c in decision.candidates}
    equalized = [name for name in verdicts if "-cle" in name]
    assert len(equalized) == 2 and len(verdicts) == 8
    assert all(not c["passed"] for name, c in verdicts.items() if name not in equalized)
    assert all(verdicts[name]["passed"] and verdicts[name]["sqnr_db"] > 30 for name in equalized)
    assert decision.flavour.equalize and decision.fp32_layers == []
    assert not decision.repair_steps and decision.verdict.drop_points <= 1.0


def test_guard_that_cannot_be_met_fails_with_the_numbers_under_int8(fragile, plain_host_search):
    model, _, data = fragile
    options = PrecisionOptions(requested="int8", compare_seconds=0.1, max_fp32_steps=0)
    with pytest.raises(GateFailedError, match=r"accuracy 99\.\d\d% FP32 vs \d+\.\d\d% INT8"):
        decide_precision(model, load_target("host"), "onnxruntime", data, options)


def test_guard_that_cannot_be_met_keeps_fp32_under_auto(fragile, plain_host_search, monkeypatch):
    # The guard is under test, not the speed rule: INT8 timed for 0.1 s on a noisy machine is
    # not always 1.1x faster than FP32, and then FP32 wins before the guard is asked.
    monkeypatch.setattr(precision, "MIN_SPEEDUP", 0.0)
    model, _, data = fragile
    options = PrecisionOptions(requested="auto", compare_seconds=0.1, max_fp32_steps=0)
    decision = decide_precision(model, load_target("host"), "onnxruntime", data, options)
    assert decision.precision == "fp32" and decision.decided_by == "accuracy-guard"
    assert decision.model is model
    assert not decision.verdict.passed and "misses the accuracy guard" in decision.reason


def _logits(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: x[i : i + 1]})[0] for i in range(len(x))])


@pytest.mark.slow
def test_guard_repair_of_a_bias_corrected_flavour_keeps_correcting(fragile):
    """The accuracy guard's repair re-quantizes with layers kept in FP32: with a
    bias-corrected flavour every re-quantized model is corrected too (its biasless Gemm/Conv
    layers that stay INT8 keep their corrections) and the repair still meets the guard."""
    model, conv, data = fragile
    pre = preprocess(model)
    x_cal, x_val, y_val = data.x_train[:100], data.x_val[:200], data.y_val[:200]
    table = calibrate(pre, x_cal)
    flavour = Int8Flavour(reduce_range=True, bias_correction=True)
    qdq = quantize_model(pre, table, flavour, samples=x_cal)
    fp32_logits = _logits(pre, x_val)

    def judge_model(candidate):
        return judge(fp32_logits, _logits(candidate, x_val), y_val, 1.0, None)

    verdict = judge_model(qdq)
    assert not verdict.passed
    repaired = repair(pre, qdq, verdict, table, flavour, judge_model, x_val, 6, samples=x_cal)
    assert repaired.verdict.passed and conv in repaired.excluded
    plain = quantize_model(pre, table, Int8Flavour(reduce_range=True), repaired.excluded)
    corrected, done = correct_biases(pre, plain, x_cal)
    assert done  # the layers still INT8 have something to correct ...
    got = {i.name: numpy_helper.to_array(i) for i in repaired.model.graph.initializer}
    for init in corrected.graph.initializer:  # ... and the repaired model carries it
        np.testing.assert_array_equal(got[init.name], numpy_helper.to_array(init))
