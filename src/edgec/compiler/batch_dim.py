"""A dynamic batch dimension for gateway stages, checked and measured before it ships.

Every stage is planned, quantized and timed at batch 1 (what a device runs). A gateway stage
serves many devices, and its server batches the requests that wait together
(``runtime/batcher.py``), so the model it ships takes any batch: :func:`make_batch_dynamic`
turns the first dimension of every graph input and output into the symbolic ``batch`` and
lets ``Reshape`` shapes that pinned it to 1 copy it instead (ONNX's ``0``); FP32, FP16 and
INT8 Q/DQ models alike (scales and zero points are per tensor or per channel, never per
sample).

:func:`batch_stage` then rebuilds the stage's ONNX Runtime artifact from that model, and ships
it only when it checks out: the batch-:data:`CHECK_BATCH` run of the new artifact gives, row by
row, the answers the batch-1 artifact gives (within :data:`RTOL`); its per-frame cost at batch 1
and at batch :data:`CHECK_BATCH` is measured when the gateway target is this machine (``host``;
another target's bundle states it was not, and stays byte-reproducible). Anything else (a TVM
artifact, whose shapes are static; an op that bakes the batch in) keeps the batch-1 stage and
says why in the manifest (``batching.max_batch`` 1 and ``batching.reason``); the gateway then
runs that stage one row at a time.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from edgec.targets import BuildOptions, Target

BATCH_DIM = "batch"
CHECK_BATCH = 16
RTOL = 1e-3
MEASURE_SECONDS = 0.3  # per batch size; at least MIN_RUNS runs each
MIN_RUNS = 3


class BatchDimError(ValueError):
    """The model's batch dimension cannot be made dynamic."""


def make_batch_dynamic(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` whose inputs and outputs take any batch (first dimension).

    Intermediate shapes (``value_info``) are dropped: ONNX Runtime infers them again.

    Raises:
        BatchDimError: An input or output has no first dimension of 1 to free.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    initializers = {init.name for init in graph.initializer}
    for value in (*graph.input, *graph.output):
        if value.name in initializers:
            continue
        dims = value.type.tensor_type.shape.dim
        if not dims:
            raise BatchDimError(f"'{value.name}' has no batch dimension (it is a scalar)")
        first = dims[0]
        if first.HasField("dim_value") and first.dim_value != 1:
            raise BatchDimError(f"'{value.name}' has batch {first.dim_value}, not 1")
        first.Clear()
        first.dim_param = BATCH_DIM
    del graph.value_info[:]
    _free_reshapes(graph)
    return out


def _free_reshapes(graph: onnx.GraphProto) -> None:
    """``Reshape`` to a constant shape ``[1, ...]``: ``[0, ...]`` (copy the batch) instead.

    The new shape is a new initializer, so a shape tensor shared with other nodes is unchanged.
    """
    inits = {init.name: init for init in graph.initializer}
    constants = {
        node.output[0]: node
        for node in graph.node
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value"
    }
    for node in graph.node:
        if node.op_type != "Reshape" or len(node.input) < 2:
            continue
        if any(a.name == "allowzero" and a.i == 1 for a in node.attribute):
            continue  # 0 would mean a zero-sized dimension, not "copy"
        name = node.input[1]
        if name in inits:
            shape = numpy_helper.to_array(inits[name])
        elif name in constants:
            shape = numpy_helper.to_array(constants[name].attribute[0].t)
        else:
            continue  # computed at run time (Shape -> ...): follows the batch already
        if shape.ndim != 1 or len(shape) == 0 or shape[0] != 1:
            continue
        freed = shape.copy()
        freed[0] = 0
        new_name = f"{name}__{BATCH_DIM}"
        if new_name not in inits:
            tensor = numpy_helper.from_array(freed.astype(np.int64), new_name)
            graph.initializer.append(tensor)
            inits[new_name] = tensor
        node.input[1] = new_name


def batch_stage(
    model: onnx.ModelProto,
    model_path: Path,
    artifact_path: Path,
    artifact_metadata: dict,
    backend: str,
    target: Target,
    precision: str,
    max_batch: int = CHECK_BATCH,
) -> dict:
    """Give a built gateway stage a dynamic batch dimension when it checks out.

    On success ``model_path`` and ``artifact_path`` are replaced by their batch-dynamic
    versions. Returns the manifest's ``batching`` field: ``max_batch``, and either the check
    and the measured per-frame cost (``per_frame_ms`` at batch 1 and ``max_batch``) or the
    ``reason`` the stage stays at batch 1.
    """
    if backend != "onnxruntime":
        return {"max_batch": 1, "reason": f"{backend} artifacts have static shapes"}
    if artifact_metadata.get("execution_providers"):
        # A GPU gateway's TensorRT engines are built per shape profile: batch 1 only for now.
        return {"max_batch": 1, "reason": "GPU execution providers are built for batch 1"}
    try:
        dynamic = make_batch_dynamic(model)
    except BatchDimError as err:
        return {"max_batch": 1, "reason": str(err)}
    from edgec.targets.onnxruntime.backend import OnnxRuntimeBackend

    with tempfile.TemporaryDirectory(prefix="edgec-batch-") as tmp:
        tmp_model = Path(tmp) / "model.onnx"
        onnx.save_model(dynamic, tmp_model)
        try:
            built = OnnxRuntimeBackend().build(
                tmp_model, target, Path(tmp) / "built", BuildOptions(precision)
            )
        except Exception as err:
            return {"max_batch": 1, "reason": f"ONNX Runtime cannot build it: {_line(err)}"}
        level = artifact_metadata.get("session_optimization_level", "disabled")
        threads = artifact_metadata.get("intra_op_threads")
        try:
            check = _check_rows(artifact_path, built.path, level, threads, max_batch)
        except Exception as err:
            return {"max_batch": 1, "reason": f"batch {max_batch} does not run: {_line(err)}"}
        if check["max_rel_diff"] > RTOL:
            return {
                "max_batch": 1,
                "reason": f"batch {max_batch} rows differ from batch 1 by "
                f"{check['max_rel_diff']:.2g} (relative; limit {RTOL:g})",
            }
        # Timed only where the gateway is this machine: elsewhere this machine's times are
        # not the gateway's, and a cost-model bundle stays byte-reproducible.
        per_frame = _per_frame_ms(built.path, level, threads, max_batch) if target.is_host else None
        onnx.save_model(dynamic, model_path)
        artifact_path.write_bytes(built.path.read_bytes())
    batching = {
        "max_batch": max_batch,
        "dim": BATCH_DIM,
        "checked": {"rows": max_batch, **check, "rtol": RTOL},
    }
    if per_frame is None:
        return {
            **batching,
            "per_frame_ms": None,
            "timing": f"not measured: the gateway target {target.name} is not this machine; "
            "time the stage there (edgec bench)",
        }
    return {
        **batching,
        "per_frame_ms": per_frame,
        "speedup": round(per_frame["1"] / per_frame[str(max_batch)], 3),
        "measured_on": "this machine (the gateway target)",
    }


def _line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return (text[0] if text else type(err).__name__)[:200]


def _session(path: Path, level: str, threads: int | None):
    import onnxruntime as ort

    from edgec.runtime.loaders import session_options

    options = session_options(level, threads)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _inputs(session, batch: int, seed: int = 0) -> np.ndarray:
    """Random rows for the stage's (single) input: ``[batch, ...]``."""
    spec = session.get_inputs()[0]
    shape = [batch, *(d if isinstance(d, int) else 1 for d in spec.shape[1:])]
    rng = np.random.default_rng(seed)
    if spec.type == "tensor(float16)":
        return rng.standard_normal(shape).astype(np.float16)
    return rng.standard_normal(shape).astype(np.float32)


def _check_rows(
    static_path: Path, dynamic_path: Path, level: str, threads: int | None, batch: int
) -> dict:
    """Run ``batch`` rows through the dynamic artifact at once and through the batch-1
    artifact one by one; the largest difference relative to the outputs' scale."""
    static = _session(static_path, level, threads)
    dynamic = _session(dynamic_path, level, threads)
    if len(static.get_inputs()) != 1:
        raise ValueError("the stage has several inputs")
    name = static.get_inputs()[0].name
    x = _inputs(static, batch)
    single = np.concatenate([static.run(None, {name: x[i : i + 1]})[0] for i in range(batch)])
    batched = dynamic.run(None, {name: x})[0]
    if batched.shape != single.shape:
        raise ValueError(f"batch {batch} gives shape {list(batched.shape)}")
    single64, batched64 = single.astype(np.float64), batched.astype(np.float64)
    scale = max(float(np.abs(single64).max()), 1e-6)
    diff = float(np.abs(batched64 - single64).max()) / scale
    same_top1 = bool(
        (single64.reshape(batch, -1).argmax(1) == batched64.reshape(batch, -1).argmax(1)).all()
    )
    return {"max_rel_diff": round(diff, 8), "same_top1": same_top1}


def _per_frame_ms(path: Path, level: str, threads: int | None, batch: int) -> dict[str, float]:
    """Median milliseconds per frame at batch 1 and at ``batch`` on this machine."""
    session = _session(path, level, threads)
    name = session.get_inputs()[0].name
    result = {}
    for size in (1, batch):
        x = _inputs(session, size)
        session.run(None, {name: x})  # warm-up
        times, start = [], time.perf_counter()
        while len(times) < MIN_RUNS or time.perf_counter() - start < MEASURE_SECONDS:
            t0 = time.perf_counter()
            session.run(None, {name: x})
            times.append(time.perf_counter() - t0)
        result[str(size)] = round(statistics.median(times) * 1000.0 / size, 4)
    return result
