"""FP16 stages: conversion with float32 I/O, when auto chooses it, the guard, the refusals, and
TVM CUDA builds of FP16 stages for the Jetson Nano (sm_53), the Orin Nano (sm_87) and the T4
(sm_75) — built here, no GPU needed.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from edgec.cli import main
from edgec.compiler.canonicalize import canonicalize
from edgec.compiler.fp16 import decide_fp16, emulation, fp32_ops, runs_fp16, to_fp16
from edgec.compiler.int8.precision import PrecisionOptions
from edgec.data import Dataset
from edgec.errors import GateFailedError
from edgec.targets import BuildOptions, get_backend, load_target


def _compile(*args: str):
    return CliRunner().invoke(main, ["compile", *args], catch_exceptions=False)


def _tvm_builds(target: str) -> tuple[bool, str]:
    return get_backend("tvm").can_build(load_target(target))


def _float16_initializers(model: onnx.ModelProto) -> int:
    return sum(init.data_type == TensorProto.FLOAT16 for init in model.graph.initializer)


def _elem_types(values) -> set[int]:
    return {v.type.tensor_type.elem_type for v in values}


def _mlp(hidden_weight: float, with_softmax: bool = False) -> onnx.ModelProto:
    """x (1x4) -> MatMul -> Relu -> MatMul -> logits (1x3) [-> Softmax]; the hidden layer's
    weights scale its activations (1e3 with inputs ~100 overflows FP16's 65504)."""
    rng = np.random.default_rng(0)
    w1 = (rng.standard_normal((4, 8)) * hidden_weight).astype(np.float32)
    w2 = (rng.standard_normal((8, 3)) / max(hidden_weight, 1.0)).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"]),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("MatMul", ["r", "w2"], ["z" if with_softmax else "logits"]),
    ]
    if with_softmax:
        nodes.append(helper.make_node("Softmax", ["z"], ["logits"], axis=-1))
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 3])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def _data(model: onnx.ModelProto, scale: float, n: int = 200) -> Dataset:
    """Unlabelled inputs ~ N(0, scale)."""
    x = (np.random.default_rng(1).standard_normal((n, 4)) * scale).astype(np.float32)
    return Dataset("synthetic", x, None, x, None, "0" * 64)


def test_conversion_has_float16_weights_float32_io_and_keeps_softmax_fp32():
    """The converted stage stores FP16 weights, keeps float32 inputs and outputs (the runtime
    and cascade are unchanged), and the block-listed Softmax is fed FP32 through a Cast."""
    converted = to_fp16(_mlp(1.0, with_softmax=True))
    assert _float16_initializers(converted) == 2
    assert _elem_types(converted.graph.input) == {TensorProto.FLOAT}
    assert _elem_types(converted.graph.output) == {TensorProto.FLOAT}
    producers = {out: node for node in converted.graph.node for out in node.output}
    (softmax,) = [n for n in converted.graph.node if n.op_type == "Softmax"]
    feeder = producers[softmax.input[0]]
    assert feeder.op_type == "Cast" and feeder.attribute[0].i == TensorProto.FLOAT
    assert {"Softmax", "Exp", "ReduceMean", "TopK", "Resize"} <= set(fp32_ops())
    assert np.isfinite(_run(converted, np.ones((1, 4), np.float32))).all()


def test_emulation_rounds_activations_that_onnx_runtime_cpu_would_keep_fp32():
    """The guard's emulation rounds every converted op's output to FP16: a hidden value past
    FP16's range becomes infinite there, while the FP32 model stays finite."""
    model = _mlp(1e3)
    x = np.full((1, 4), 100.0, np.float32)
    assert np.isfinite(_run(model, x)).all()
    assert not np.isfinite(_run(emulation(model), x)).all()


def test_auto_keeps_fp32_where_fp16_overflows_and_explicit_fp16_fails_the_gate():
    """FP16 that overflows fails the guard: auto keeps the FP32 model (decided by the
    accuracy guard, recorded in precision_decision); --precision fp16 is exit 1 with the
    numbers."""
    model, nano = _mlp(1e3), load_target("jetson-nano")
    data = _data(model, 100.0)
    decision = decide_fp16(model, nano, "tvm", data, PrecisionOptions(requested="auto"))
    assert decision.precision == "fp32" and decision.model is model
    fields = decision.manifest_fields()
    assert fields["precision_decision"]["decided_by"] == "accuracy-guard"
    assert fields["accuracy_guard"]["passed"] is False
    with pytest.raises(GateFailedError, match="FP16 for stage 'stage' misses the accuracy guard"):
        decide_fp16(model, nano, "tvm", data, PrecisionOptions(requested="fp16"))


def test_a_well_scaled_model_passes_the_guard_with_a_high_sqnr():
    """The same network at ordinary scale converts: FP16, guard passed, SQNR >= 30 dB."""
    model = _mlp(1.0)
    decision = decide_fp16(
        model, load_target("jetson-nano"), "tvm", _data(model, 1.0), PrecisionOptions()
    )
    assert decision.precision == "fp16" and decision.decided_by == "gpu-target"
    guard = decision.manifest_fields()["accuracy_guard"]
    assert guard["passed"] and guard["sqnr_db"] >= 30 and "fp16_accuracy" in guard
    assert _float16_initializers(decision.model) == 2


def test_without_data_auto_keeps_fp32_and_explicit_fp16_says_it_is_unchecked():
    """No --data: nothing to judge FP16 with. auto keeps FP32; fp16 converts and says the
    stage was not checked."""
    model, nano = _mlp(1.0), load_target("jetson-nano")
    auto = decide_fp16(model, nano, "tvm", None, PrecisionOptions(requested="auto"))
    assert (auto.precision, auto.decided_by) == ("fp32", "no-data")
    forced = decide_fp16(model, nano, "tvm", None, PrecisionOptions(requested="fp16"))
    assert forced.precision == "fp16" and "not checked against FP32" in forced.reason


def test_fp16_needs_a_target_listing_it_and_a_backend_on_its_gpu():
    """The backend is asked (uses_accelerator), never named: TVM runs the Nano's stages on its
    GPU, ONNX Runtime on its CPU; the Pi lists no FP16 at all."""
    nano, pi = load_target("jetson-nano"), load_target("raspberry-pi-4")
    assert runs_fp16(nano, get_backend("tvm")) == (True, "")
    ok, why = runs_fp16(nano, get_backend("onnxruntime"))
    assert not ok and "on its CPU" in why
    ok, why = runs_fp16(pi, get_backend("tvm"))
    assert not ok and "does not list FP16" in why


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (("-t", "raspberry-pi-4"), "target 'raspberry-pi-4' does not list FP16"),
        (("-t", "jetson-nano", "--backend", "onnxruntime"), "runs jetson-nano's stages on its CPU"),
    ],
)
def test_fp16_on_a_cpu_only_target_or_backend_is_exit_2_with_the_reason(
    tmp_path, teacher_path, args, reason
):
    """--precision fp16 where no GPU runs it: one sentence with the reason, exit 2, no bundle."""
    out = tmp_path / "b"
    result = _compile(
        str(teacher_path), *args, "--precision", "fp16", "--students", "none", "-o", str(out)
    )
    assert result.exit_code == 2, result.output
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: --precision fp16 needs a GPU that runs FP16") and reason in last
    assert "Traceback" not in result.output and not out.exists()
    if "jetson-nano" in args and _tvm_builds("jetson-nano")[0]:  # a GPU backend builds here
        assert "use --backend tvm (it builds for the GPU), or --precision fp32" in last


def test_jetson_nano_ships_an_fp16_stage_built_for_sm53(tmp_path, teacher_path):
    """The issue's done-when (students none to keep it fast): `edgec compile teacher.onnx
    --target jetson-nano --data digits` ships an FP16 stage — float16 weights inside, float32
    I/O — within 0.5 point of FP32 accuracy, built by TVM CUDA for sm_53, the manifest saying
    so."""
    ok, why = _tvm_builds("jetson-nano")
    if not ok:  # the GPU build needs TVM and the aarch64 cross toolchain for the host code
        pytest.skip(why)
    out = tmp_path / "nano"
    result = _compile(
        str(teacher_path), "-t", "jetson-nano", "--data", "digits", "--students", "none",
        "-o", str(out),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    (stage,) = json.loads((out / "manifest.json").read_text())["stages"]
    assert stage["precision"] == "fp16" and stage["backend"] == "tvm"
    assert stage["backend_options"]["device"] == "cuda"
    assert stage["backend_options"]["cuda_arch"] == "sm_53"
    decision = stage["precision_decision"]
    assert (decision["requested"], decision["chosen"], decision["decided_by"]) == (
        "auto",
        "fp16",
        "gpu-target",
    )
    guard = stage["accuracy_guard"]
    assert guard["passed"] and abs(stage["accuracy"] - guard["fp32_accuracy"]) <= 0.005
    assert "FP16" in stage["accuracy_measured_with"]
    model = onnx.load(out / stage["model"])
    types = [init.data_type for init in model.graph.initializer]
    assert TensorProto.FLOAT not in types and types.count(TensorProto.FLOAT16) >= 5
    assert _elem_types(model.graph.input) == _elem_types(model.graph.output) == {TensorProto.FLOAT}
    assert b"half" in (out / stage["artifact"]).read_bytes()


@pytest.mark.parametrize(
    ("target", "sm"),
    [("jetson-nano", "sm_53"), ("jetson-orin-nano", "sm_87"), ("t4-gateway", "sm_75")],
)
def test_tvm_cuda_builds_the_fp16_stage(tmp_path, teacher_path, target, sm):
    """TVM builds the FP16 digits teacher for each GPU's sm here (no GPU needed): the artifact
    exists, is for that sm, takes float32 input and its CUDA source computes in half."""
    ok, why = _tvm_builds(target)
    if not ok:
        pytest.skip(why)
    path = tmp_path / "model.onnx"
    onnx.save(to_fp16(canonicalize(onnx.load(teacher_path))), path)
    artifact = get_backend("tvm").build(
        path, load_target(target), tmp_path / "out", BuildOptions("fp16")
    )
    assert Path(artifact.path).is_file()
    assert (artifact.metadata["device"], artifact.metadata["cuda_arch"]) == ("cuda", sm)
    assert artifact.metadata["inputs"][0]["dtype"] == "float32"
    source = artifact.path.read_bytes()
    assert b'extern "C" __global__' in source and b"half" in source


@pytest.mark.slow
def test_the_issues_full_nano_command_ships_fp16_students_on_the_gpu(tmp_path, teacher_path):
    """The issue's command as written (students trained): the device's students are FP16 TVM
    CUDA sm_53 stages; the teacher runs on the x86 gateway, which runs no FP16, so it takes
    the INT8/FP32 path there."""
    ok, why = _tvm_builds("jetson-nano")
    if not ok:
        pytest.skip(why)
    out = tmp_path / "nano"
    result = _compile(str(teacher_path), "-t", "jetson-nano", "--data", "digits", "-o", str(out))
    assert result.exit_code == 0, result.output
    stages = json.loads((out / "manifest.json").read_text())["stages"]
    students = [s for s in stages if s["role"] == "student"]
    assert students and all(s["precision"] == "fp16" for s in students)
    assert all(s["backend_options"]["cuda_arch"] == "sm_53" for s in students)
    for stage in students:
        assert stage["accuracy"] >= stage["accuracy_guard"]["fp32_accuracy"] - 0.005
    (teacher,) = [s for s in stages if s["role"] == "teacher"]
    assert teacher["tier"] == "gateway" and teacher["precision"] != "fp16"
