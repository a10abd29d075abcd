"""The roofline cost model on INT8 graphs: one number for the INT8 decision and the manifest.

The demo's ``tiny`` student was decided INT8 at an estimated 0.077 ms (the FP32 graph priced at
INT8 peaks) and then shipped at 0.207 ms (the Q/DQ graph, every Q/DQ node charged as an op),
slower than the FP32 ``small`` student with 3.4x its MACs. These tests hold the decision to the
number the manifest ships, and the cost model to what the backend runs.
"""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest

from edgec.compiler import compile_model
from edgec.compiler.canonicalize import canonicalize
from edgec.compiler.int8.precision import PrecisionOptions, decide_precision
from edgec.compiler.loading import load_model
from edgec.compiler.planning.cost_model import estimate_latency, layer_costs
from edgec.config import CompileConfig
from edgec.data import load_dataset
from edgec.targets import load_target

TEACHER = Path(__file__).resolve().parents[3] / "examples" / "digits" / "teacher.onnx"
QDQ = ("QuantizeLinear", "DequantizeLinear")


@pytest.fixture(scope="module")
def rpi4_int8_teacher():
    """The teacher's INT8 decision for raspberry-pi-4 (cost model), with its FP32 graph."""
    model = canonicalize(load_model(TEACHER, {}).proto)
    target = load_target("raspberry-pi-4")
    decision = decide_precision(
        model, target, "onnxruntime", load_dataset("digits"), PrecisionOptions()
    )
    assert decision.precision == "int8" and decision.decided_by == "cost-model"
    return model, decision, target


def test_fused_qdq_pairs_cost_nothing_in_an_int8_estimate(rpi4_int8_teacher):
    """Every Q/DQ node of the teacher's INT8 graph but the input's Q and the output's DQ fuses
    into an integer kernel or a constant: the graph costs what the FP32 graph priced fully
    quantized costs, give or take those two ops (and the ReLUs the quantizer fused)."""
    fp32, decision, target = rpi4_int8_teacher
    costs = layer_costs(decision.model, target, "onnxruntime", "int8")
    charged = [c.op for c in costs if c.op in QDQ and c.latency_ms > 0]
    assert sorted(charged) == ["DequantizeLinear", "QuantizeLinear"], charged
    ideal = estimate_latency(fp32, target, "onnxruntime", "int8").p50
    two_ops = 2 * target.cost_model.op_overhead_us / 1e3
    int8 = estimate_latency(decision.model, target, "onnxruntime", "int8").p50
    assert int8 <= ideal + two_ops + 1e-3
    assert int8 < estimate_latency(fp32, target, "onnxruntime", "fp32").p50


def test_the_int8_decision_records_the_estimate_of_the_graph_it_ships(rpi4_int8_teacher):
    """The decision's INT8 latency is the cost model's estimate of the INT8 model it returns
    (the call the manifest's stage latency comes from), and its FP32 latency the FP32
    graph's."""
    fp32, decision, target = rpi4_int8_teacher
    shipped = estimate_latency(decision.model, target, "onnxruntime", "int8").p50
    assert decision.latency_ms["int8"] == shipped
    assert decision.latency_ms["fp32"] == estimate_latency(fp32, target, "onnxruntime").p50


def test_layers_kept_fp32_in_an_int8_graph_are_priced_as_fp32(rpi4_int8_teacher):
    """A layer with no DequantizeLinear input (the accuracy guard kept it FP32) runs FP32
    kernels: the first convolution, fed the FP32 input directly, costs exactly what it costs in
    the FP32 graph, and more than its integer kernel."""
    fp32, decision, target = rpi4_int8_teacher
    model = onnx.ModelProto()
    model.CopyFrom(decision.model)
    nodes = list(model.graph.node)
    index, conv = next((i, n) for i, n in enumerate(nodes) if n.op_type == "Conv")
    dq = next(n for n in nodes if conv.input[0] in n.output)
    quantize = next(n for n in nodes if dq.input[0] in n.output)
    integer = layer_costs(model, target, "onnxruntime", "int8")[index]
    conv.input[0] = quantize.input[0]  # bypass the input's Q/DQ: the Conv now sees FP32
    kept = layer_costs(model, target, "onnxruntime", "int8")[index]
    reference = next(c for c in layer_costs(fp32, target, "onnxruntime") if c.op == "Conv")
    assert kept.macs == reference.macs and kept.params == reference.params
    assert kept.latency_ms == pytest.approx(reference.latency_ms, rel=1e-9)
    assert kept.latency_ms > integer.latency_ms


@pytest.mark.slow
def test_demo_compile_int8_decisions_agree_with_the_manifest_and_follow_the_macs(tmp_path):
    """The demo's shape (raspberry-pi-4, digits, two students): every stage the cost model
    decided records, for the precision it ships, the manifest's p50; an INT8 stage is below its
    FP32 estimate; and on the device a stage with fewer MACs is never estimated slower."""
    config = CompileConfig(
        model=TEACHER,
        target="raspberry-pi-4",
        output=tmp_path / "demo",
        data="digits",
        students=(0.1, 0.3),
        distill_epochs=2,
    )
    manifest = json.loads((compile_model(config).bundle / "manifest.json").read_text())
    decided = [s for s in manifest["stages"] if s["precision_decision"]["decided_by"] != "target"]
    assert {s["name"] for s in decided} == {"tiny", "small", "teacher"}
    for stage in decided:
        decision = stage["precision_decision"]
        assert decision["latency_source"] == stage["latency_ms"]["source"] == "estimated"
        assert decision["latency_ms"][stage["precision"]] == stage["latency_ms"]["p50"], stage
        if stage["precision"] == "int8":
            assert decision["latency_ms"]["int8"] < decision["latency_ms"]["fp32"]
    device = sorted(
        (s for s in manifest["stages"] if s["tier"] == "device"), key=lambda s: s["macs"]
    )
    p50 = [s["latency_ms"]["p50"] for s in device]
    assert p50 == sorted(p50), [
        (s["name"], s["precision"], s["macs"], s["latency_ms"]) for s in device
    ]
