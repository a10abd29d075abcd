"""Gateway stages with a dynamic batch dimension (:mod:`edgec.compiler.batch_dim`).

Real models run with real ONNX Runtime: FP32, FP16 (edgec's own conversion) and INT8 Q/DQ
(ONNX Runtime's static quantizer), each with a ``Reshape`` that pinned the batch to 1. Batch
16 must give, row by row, what batch 1 gives.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgec.compiler import batch_dim
from edgec.compiler.fp16 import to_fp16
from edgec.targets import load_target
from edgec.targets.base import BuildOptions
from edgec.targets.onnxruntime.backend import OnnxRuntimeBackend


def _reshape_model(allowzero: int = 0) -> onnx.ModelProto:
    """Conv -> Relu -> GlobalAveragePool -> Reshape to the constant [1, 8] -> Gemm."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "b"),
        numpy_helper.from_array(np.array([1, 8], np.int64), "flat"),
        numpy_helper.from_array(rng.standard_normal((4, 8)).astype(np.float32), "fc_w"),
        numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "fc_b"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("GlobalAveragePool", ["r"], ["p"], name="pool"),
        helper.make_node("Reshape", ["p", "flat"], ["f"], name="flat", allowzero=allowzero),
        helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["logits"], transB=1, name="fc"),
    ]
    graph = helper.make_graph(
        nodes,
        "reshape",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 4])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return onnx.shape_inference.infer_shapes(model)


def _int8(model: onnx.ModelProto, tmp_path) -> onnx.ModelProto:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            rng = np.random.default_rng(1)
            self.rows = iter([{"x": rng.random((1, 3, 16, 16), np.float32)} for _ in range(8)])

        def get_next(self):
            return next(self.rows, None)

    source, out = tmp_path / "fp32.onnx", tmp_path / "int8.onnx"
    onnx.save(model, source)
    quantize_static(source, out, Reader(), quant_format=QuantFormat.QDQ)
    return onnx.load(out)


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_a_dynamic_batch_of_16_gives_each_row_what_batch_1_gives(precision, tmp_path):
    """The batch-1 model (its Reshape pinned the batch to 1) made dynamic: 16 rows at once
    equal the 16 rows one by one, in FP32, FP16 and INT8 Q/DQ; the model stays valid."""
    model = _reshape_model()
    if precision == "fp16":
        model = to_fp16(model)
    elif precision == "int8":
        model = _int8(model, tmp_path)
        assert any(n.op_type == "QuantizeLinear" for n in model.graph.node)
    dynamic = batch_dim.make_batch_dynamic(model)
    onnx.checker.check_model(dynamic)
    assert dynamic.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert dynamic.graph.output[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    x = np.random.default_rng(2).random((16, 3, 16, 16), np.float32)
    rows = np.concatenate([_run(model, x[i : i + 1]) for i in range(16)])
    with pytest.raises(Exception, match=r"(?i)shape|dimension|invalid"):
        _run(model, x)  # the batch-1 model refuses 16 rows
    np.testing.assert_allclose(_run(dynamic, x), rows, rtol=1e-4, atol=1e-5)


def _built_stage(model: onnx.ModelProto, tmp_path):
    stage_dir = tmp_path / "stage"
    stage_dir.mkdir()
    model_path = stage_dir / "model.onnx"
    onnx.save(model, model_path)
    target = load_target("host")
    artifact = OnnxRuntimeBackend().build(model_path, target, stage_dir, BuildOptions())
    return target, model_path, artifact


def test_a_built_stage_gets_a_batch_artifact_with_its_cost_at_batch_16_measured(tmp_path):
    """The stage's model and artifact are replaced by batch-dynamic ones once batch 16 matched
    batch 1 row by row; the per-frame cost at batch 1 and 16 is measured (positive)."""
    model = _reshape_model()
    target, model_path, artifact = _built_stage(model, tmp_path)
    batching = batch_dim.batch_stage(
        model, model_path, artifact.path, artifact.metadata, "onnxruntime", target, "fp32"
    )
    assert batching["max_batch"] == 16, batching
    assert batching["checked"]["rows"] == 16 and batching["checked"]["same_top1"]
    assert batching["checked"]["max_rel_diff"] <= batch_dim.RTOL
    assert set(batching["per_frame_ms"]) == {"1", "16"}
    assert all(v > 0 for v in batching["per_frame_ms"].values())
    json.dumps(batching)  # a manifest field
    shipped = onnx.load(model_path)
    assert shipped.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    session = ort.InferenceSession(str(artifact.path), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(3).random((16, 3, 16, 16), np.float32)
    rows = np.concatenate([_run(model, x[i : i + 1]) for i in range(16)])
    np.testing.assert_allclose(session.run(None, {"x": x})[0], rows, rtol=1e-4, atol=1e-5)


def test_a_model_that_bakes_its_batch_in_keeps_batch_1_and_says_why(tmp_path):
    """A Reshape with allowzero=1 to [1, 8] cannot follow the batch: batch 16 fails, so the
    stage stays at batch 1 with the reason, and its files are left as they were."""
    model = _reshape_model(allowzero=1)
    target, model_path, artifact = _built_stage(model, tmp_path)
    before = (model_path.read_bytes(), artifact.path.read_bytes())
    batching = batch_dim.batch_stage(
        model, model_path, artifact.path, artifact.metadata, "onnxruntime", target, "fp32"
    )
    assert batching["max_batch"] == 1 and "batch 16" in batching["reason"], batching
    assert (model_path.read_bytes(), artifact.path.read_bytes()) == before


def test_a_tvm_stage_keeps_batch_1(tmp_path):
    """TVM artifacts have static shapes: no batching, and the manifest says so."""
    batching = batch_dim.batch_stage(
        _reshape_model(), tmp_path / "m", tmp_path / "a", {}, "tvm", load_target("host"), "fp32"
    )
    assert batching == {"max_batch": 1, "reason": "tvm artifacts have static shapes"}


def test_a_model_without_a_batch_of_1_is_refused():
    """An input whose first dimension is 3 is not a batch of one: nothing to free."""
    model = _reshape_model()
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 3
    with pytest.raises(batch_dim.BatchDimError, match="batch 3"):
        batch_dim.make_batch_dynamic(model)


def test_a_gateway_that_is_not_this_machine_gets_the_check_but_no_timing(tmp_path):
    """For a cost-model gateway target (x86-gateway) the batch is checked here but not timed
    (this machine's times are not the gateway's, and the bundle stays byte-reproducible)."""
    model = _reshape_model()
    stage_dir = tmp_path / "stage"
    stage_dir.mkdir()
    model_path = stage_dir / "model.onnx"
    onnx.save(model, model_path)
    target = load_target("x86-gateway")
    artifact = OnnxRuntimeBackend().build(model_path, target, stage_dir, BuildOptions())
    batching = batch_dim.batch_stage(
        model, model_path, artifact.path, artifact.metadata, "onnxruntime", target, "fp32"
    )
    assert batching["max_batch"] == 16 and batching["per_frame_ms"] is None
    assert "x86-gateway is not this machine" in batching["timing"]
