"""Distillation-aware QAT: a stage whose post-training INT8 misses the accuracy guard is
fine-tuned with fake quantization and ships INT8.

The stage is the example teacher made fragile for INT8 weights (:func:`coarse_weight_teacher`):
one channel of each hidden layer is dead (ReLU of a negative constant) and every channel of the
next layer gets a huge weight from it. The dead input contributes nothing in FP32, but it sets
each channel's symmetric INT8 weight scale, so the real weights land on a grid a few levels
wide: post-training quantization loses points everywhere, more than the guard's repair can keep
in FP32. QAT keeps that grid (a weight on a dead input gets no gradient) and trains the real
weights to work on it.

Each case is one of the quantization schemes edgec's PTQ uses — s8s8 per-channel (ARM),
u8s8 with 8-bit weights (x86 with VNNI) and u8s8 with 7-bit weights (x86 without VNNI) — on a
non-host target, whose INT8 is judged by that target's arithmetic (exact on ARM and VNNI; this
machine's kernels with 7-bit weights, which cannot saturate): the result holds on AVX2 and VNNI
machines alike. The fragility is sized to each scheme's weight grid (the huge weight is
``0.8 * qmax`` times the channel's largest real weight).
"""

from __future__ import annotations

import itertools

import numpy as np
import onnx
import pytest
from int8_helpers import canonical_teacher
from onnx import numpy_helper

from edgec.compiler.int8.precision import PrecisionOptions, decide_precision
from edgec.compiler.int8.qat import QatRequest
from edgec.data import load_dataset
from edgec.errors import GateFailedError
from edgec.passes.quantize import Int8Flavour, calibrate, preprocess, quantize_model
from edgec.targets import load_target

pytest.importorskip("torch")


def coarse_weight_teacher(factor: float) -> onnx.ModelProto:
    """The example teacher with a dead channel per hidden layer and huge weights from it."""
    model = canonical_teacher()
    inits = {init.name: init for init in model.graph.initializer}

    def get(name: str) -> np.ndarray:
        return numpy_helper.to_array(inits[name]).copy()

    def put(name: str, value: np.ndarray) -> None:
        inits[name].CopyFrom(numpy_helper.from_array(value.astype(np.float32), name))

    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    gemms = [n for n in model.graph.node if n.op_type == "Gemm"]
    layers = [*convs, *gemms]
    for layer, after in itertools.pairwise(layers):
        weight, bias = get(layer.input[1]), get(layer.input[2])
        weight[0], bias[0] = 0.0, -1.0  # channel 0 is always 0 after the ReLU
        put(layer.input[1], weight)
        put(layer.input[2], bias)
        nxt = get(after.input[1])
        big = np.abs(nxt).reshape(len(nxt), -1).max(axis=1) * factor
        if nxt.ndim == 4:
            nxt[:, 0, 1, 1] = big  # reads channel 0 of the previous conv
        else:
            nxt[:, 0] = big  # the first flattened feature comes from channel 0
        put(after.input[1], nxt)
    return model


CASES = {
    "arm-s8s8": ("raspberry-pi-4", None, 127),
    "x86-vnni-u8s8": ("x86-gateway", None, 127),
    "x86-avx2-u8s8-7bit-weights": ("x86-gateway", ["avx2", "fma"], 64),
}


def _target(name: str, features: list[str] | None):
    target = load_target(name)
    if features is None:
        return target
    return target.model_copy(
        update={"cpu": target.cpu.model_copy(update={"isa_features": features})}
    )


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", seed=0)


@pytest.mark.parametrize("case", list(CASES))
def test_qat_recovers_a_stage_whose_post_training_int8_misses_the_guard(case, digits):
    """PTQ (with the guard's repair, up to two layers in FP32) misses the guard; QAT passes it
    with the whole stage in INT8, in the same scheme, and the manifest records before/after."""
    name, features, qmax = CASES[case]
    target = _target(name, features)
    model = coarse_weight_teacher(0.8 * qmax)
    options = PrecisionOptions(requested="int8", max_fp32_steps=2, compare_seconds=0.2)

    with pytest.raises(GateFailedError, match="misses the accuracy guard"):
        decide_precision(model, target, "onnxruntime", digits, options)

    with_qat = PrecisionOptions(
        requested="int8",
        max_fp32_steps=2,
        compare_seconds=0.2,
        qat=QatRequest(mode="auto", epochs=4),
    )
    decision = decide_precision(model, target, "onnxruntime", digits, with_qat)
    assert decision.precision == "int8"
    assert decision.verdict.passed and decision.fp32_layers == []
    assert decision.flavour.reduce_range == (qmax == 64)
    ops = {n.op_type for n in decision.model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    record = decision.manifest_fields()["precision_decision"]["qat"]
    assert record["ran"] and record["shipped"]
    assert not record["before"]["passed"] and record["after"]["passed"]
    assert record["after"]["int8_accuracy"] > record["before"]["int8_accuracy"]
    assert record["epochs_run"] == 4 and record["fake_quantized"]["weights"] == 5


def test_qat_off_keeps_post_training_quantization_only(digits):
    """--qat off: the failing stage stays FP32 under auto, and the decision records no QAT."""
    options = PrecisionOptions(max_fp32_steps=2, compare_seconds=0.2, qat=QatRequest(mode="off"))
    decision = decide_precision(
        coarse_weight_teacher(0.8 * 127),
        load_target("raspberry-pi-4"),
        "onnxruntime",
        digits,
        options,
    )
    assert decision.precision == "fp32" and decision.decided_by == "accuracy-guard"
    assert decision.manifest_fields()["precision_decision"]["qat"] is None


def test_fine_tuning_is_reproducible(digits):
    """The same seed gives the same fine-tuned weights and ranges, byte for byte."""
    from edgec.compiler.int8.qat_train import FinetuneSettings, finetune

    model = coarse_weight_teacher(0.8 * 127)
    pre = preprocess(model)
    x = digits.x_train[:200]
    table = calibrate(pre, x, "minmax")
    flavour = Int8Flavour("int8", per_channel=True)
    qdq = quantize_model(pre, table, flavour)
    logits = np.zeros((len(x), 10), np.float32)
    logits[np.arange(len(x)), digits.y_train[:200]] = 5.0
    settings = FinetuneSettings(epochs=1, seed=3)
    runs = [finetune(pre, qdq, table, flavour, x, logits, logits, None, settings) for _ in range(2)]
    assert runs[0].model.SerializeToString() == runs[1].model.SerializeToString()
    assert runs[0].calibration.ranges == runs[1].calibration.ranges
    assert runs[0].model.SerializeToString() != pre.SerializeToString()  # it did train


@pytest.mark.parametrize(
    "flavour",
    [
        Int8Flavour("int8", per_channel=True),
        Int8Flavour("uint8", per_channel=True),
        Int8Flavour("uint8", per_channel=True, reduce_range=True),
    ],
    ids=lambda f: f.name,
)
def test_the_fake_quantized_program_computes_what_onnx_runtime_runs_as_int8(flavour, digits):
    """Before training, the torch simulation of the fragile stage matches ORT's exact INT8
    arithmetic on its PTQ model (same quantized tensors, scales and weight grids) far closer
    than FP32 does: what QAT trains against is the model that ships."""
    import onnxruntime as ort
    import torch

    from edgec.compiler.int8.accuracy_guard import sqnr_db
    from edgec.compiler.int8.qat_train import simulate

    pre = preprocess(coarse_weight_teacher(0.8 * (64 if flavour.reduce_range else 127)))
    table = calibrate(pre, digits.x_train[:300], "minmax")
    qdq = quantize_model(pre, table, flavour)
    options = ort.SessionOptions()
    options.add_session_config_entry("session.x64quantprecision", "1")  # exact u8s8 on AVX2
    x = digits.x_val[:200]

    def run(model):
        session = ort.InferenceSession(
            model.SerializeToString(), options, providers=["CPUExecutionProvider"]
        )
        return np.concatenate([session.run(None, {"x": x[i : i + 1]})[0] for i in range(len(x))])

    int8, fp32 = run(qdq), run(pre)
    program = simulate(pre, qdq, table, flavour, x[:8]).program.eval()
    with torch.no_grad():
        simulated = program(torch.from_numpy(x)).numpy()
    assert sqnr_db(int8, simulated) > 25.0
    assert sqnr_db(int8, simulated) > sqnr_db(int8, fp32) + 10.0
    assert (simulated.argmax(1) == int8.argmax(1)).mean() >= 0.98


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--qat", "on", "--precision", "fp32"], "--qat on fine-tunes INT8 stages"),
        (["--qat", "sometimes"], "'sometimes' is not one of 'auto', 'on', 'off'"),
    ],
)
def test_bad_qat_requests_are_refused(tmp_path, teacher_path, args, fragment):
    from click.testing import CliRunner

    from edgec.cli import main

    out = tmp_path / "b"
    result = CliRunner().invoke(
        main, ["compile", str(teacher_path), "-t", "raspberry-pi-4", "-o", str(out), *args]
    )
    assert result.exit_code == 2, result.output
    assert fragment in result.output and "Traceback" not in result.output
    assert not out.exists()
