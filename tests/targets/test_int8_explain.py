"""explain_int8 and ``edgec inspect --precision int8``: what makes INT8 slow, read from the
target's ISA and from ONNX Runtime's real optimised graph of a Q/DQ model."""

from __future__ import annotations

import json
import platform
from pathlib import Path

import numpy as np
import onnx
import pytest
import yaml
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from edgec.cli import main
from edgec.passes.quantize import Int8Flavour, calibrate, preprocess, quantize_model
from edgec.targets import load_target
from edgec.targets.descriptor import _descriptor_dir
from edgec.targets.onnxruntime.int8_explain import explain_int8

TEACHER = Path(__file__).resolve().parents[2] / "examples" / "digits" / "teacher.onnx"
X86 = platform.machine() in ("x86_64", "AMD64")


def residual_model() -> onnx.ModelProto:
    """Conv 3->16, Relu, depthwise 3x3 Conv (group 16), Relu, pointwise Conv, residual Add,
    GlobalAveragePool, Flatten, Gemm: a MobileNetV2 block in miniature."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((16, 3, 3, 3)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.standard_normal((16, 1, 3, 3)).astype(np.float32), "dw"),
        numpy_helper.from_array(rng.standard_normal((16, 16, 1, 1)).astype(np.float32), "pw"),
        numpy_helper.from_array(rng.standard_normal((4, 16)).astype(np.float32), "fc"),
    ]
    nodes = [
        helper.make_node("Conv", ["input", "w1"], ["a"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("Relu", ["a"], ["b"], name="relu1"),
        helper.make_node("Conv", ["b", "dw"], ["c"], pads=[1, 1, 1, 1], group=16, name="dwconv"),
        helper.make_node("Relu", ["c"], ["d0"], name="relu2"),
        helper.make_node("Conv", ["d0", "pw"], ["d1"], name="pwconv"),
        helper.make_node("Add", ["d1", "b"], ["d"], name="residual"),
        helper.make_node("GlobalAveragePool", ["d"], ["e"], name="pool"),
        helper.make_node("Flatten", ["e"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fc"], ["logits"], transB=1, name="fc"),
    ]
    graph = helper.make_graph(
        nodes,
        "residual",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 4])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@pytest.fixture(scope="module")
def quantized():
    model = preprocess(residual_model())
    x = np.random.default_rng(1).standard_normal((16, 3, 32, 32)).astype(np.float32)
    table = calibrate(model, x)
    return {
        "s8s8-per-tensor": quantize_model(model, table, Int8Flavour("int8", per_channel=False)),
        "u8s8-per-channel": quantize_model(model, table, Int8Flavour("uint8", per_channel=True)),
    }


@pytest.mark.skipif(not X86, reason="reads ONNX Runtime's x86 kernels' fusions")
def test_s8s8_per_tensor_on_x86_names_unfused_qdq_and_per_tensor_depthwise(quantized):
    """ORT's x86 build has no int8 Add: convolutions around the residual Add stay FP32."""
    findings = " | ".join(explain_int8(quantized["s8s8-per-tensor"], load_target("host")))
    assert "depthwise/grouped Conv have per-tensor INT8 weights ('dwconv')" in findings
    assert "still run in FP32 between DequantizeLinear and QuantizeLinear" in findings
    unfused = findings.split("still run in FP32")[1]
    assert "'conv'" in unfused or "'dwconv'" in unfused or "'pwconv'" in unfused
    assert "quantized to int8 (s8s8)" in findings


@pytest.mark.skipif(not X86, reason="reads ONNX Runtime's x86 kernels' fusions")
def test_u8s8_per_channel_on_a_vnni_x86_has_nothing_to_explain(quantized):
    host = load_target("host")
    if not {"avx512_vnni", "avx_vnni"} & set(host.cpu.isa_features):
        pytest.skip("this machine has no VNNI")
    (finding,) = explain_int8(quantized["u8s8-per-channel"], host)
    assert finding.startswith("No INT8 slow-down found")


def test_x86_target_without_vnni_is_explained(tmp_path, quantized):
    data = yaml.safe_load((_descriptor_dir() / "x86-gateway.yaml").read_text())
    data.update(name="old-xeon")
    data["cpu"]["isa_features"] = ["avx2", "fma"]
    path = tmp_path / "old-xeon.yaml"
    path.write_text(yaml.safe_dump(data))
    findings = explain_int8(quantized["u8s8-per-channel"], str(path))
    assert "old-xeon has no VNNI" in findings[0] and "reduce_range" in findings[0]


def test_arm_without_dotprod_is_explained_and_fusions_are_not_guessed(quantized):
    findings = explain_int8(quantized["u8s8-per-channel"], "raspberry-pi-4")
    assert "no dot-product instructions" in findings[0]
    pi5 = " ".join(explain_int8(quantized["u8s8-per-channel"], "raspberry-pi-5"))
    assert "dot-product" not in pi5
    if X86:
        assert "cannot show what it does on raspberry-pi-5" in pi5


def test_target_without_int8_and_fp32_model_are_said_plainly():
    findings = explain_int8(str(TEACHER), "jetson-nano")
    assert findings[0].startswith("jetson-nano lists no INT8 precision")
    assert "no INT8 operators" in findings[-1]


def test_inspect_precision_int8_adds_the_explanation():
    result = CliRunner().invoke(
        main,
        ["inspect", str(TEACHER), "--precision", "int8", "-t", "raspberry-pi-4", "--json"],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["precision"] == "int8"
    lines = report["int8_explanation"]
    assert "read as edgec would quantize it for raspberry-pi-4 (s8s8-per-channel" in lines[0]
    assert any("no dot-product instructions" in line for line in lines)
