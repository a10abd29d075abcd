"""A roofline cost model: per-layer MACs and bytes against a target's peaks.

For each node, the estimate is ``max(compute time, memory time) + launch overhead`` where

* compute time = ``2 * MACs / (peak * compute_efficiency)`` — peak is the compute unit the
  backend uses (the accelerator for TensorRT, and for ``tvm`` when the target's ``tvm_target``
  is CUDA, as the TVM backend then builds CUDA kernels; else the CPU) at the stage's precision;
* memory time = ``bytes moved / (bandwidth * memory_efficiency)`` — inputs, outputs and
  weights each read or written once (no cache reuse across layers is assumed);
* overhead = ``op_overhead_us`` per node (dispatch, synchronisation).

The efficiency factors come from the descriptor's ``cost_model`` section (defaults 0.35 of
peak compute, 0.6 of peak bandwidth, 5 us per op). They are deliberately conservative: on this
development machine ONNX Runtime reaches 84-92% of FP32 peak on resnet18's big convolutions,
but small edge models spend most layers far from peak. Estimates carry the source
``estimated`` everywhere they appear.

Elementwise ops count one operation per output element (as MACs/2), so they are almost
always memory-bound, as on real hardware.

At ``int8`` a graph without Q/DQ nodes is priced as if every layer ran on integer kernels (what
quantizing it would give at best). An INT8 graph (QuantizeLinear/DequantizeLinear in QDQ form,
what :mod:`edgec.passes.quantize` writes) is priced as its backend runs it: the backends fuse
``DequantizeLinear -> op -> QuantizeLinear`` into one integer kernel (ONNX Runtime's
QLinearConv, QGemm, ...; TVM's QNN and TensorRT likewise) and fold the weights'
DequantizeLinear into constants, so those Q/DQ nodes cost nothing and the op is priced at the
INT8 peak with one-byte tensors. What does not fuse is charged as it runs: an op with no DQ
input (a layer the accuracy guard kept in FP32) at the FP32 peak with four-byte tensors, the
QuantizeLinear after such a layer (and on the graph input), and a DequantizeLinear that feeds
an FP32 layer or a graph output. :func:`estimate_latency` of a stage's final model is the one
number both the INT8 decision (:mod:`edgec.compiler.int8.precision`) and the stage's manifest
latency use.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from edgec.targets.base import LatencyStats
from edgec.targets.descriptor import Target
from edgec.targets.registry import backend_names, get_backend

_BYTES = {"fp32": 4, "fp16": 2, "int8": 1}
_QDQ = frozenset({"QuantizeLinear", "DequantizeLinear"})
# Ops the backends run on integer kernels when their inputs come from DequantizeLinear: the
# QDQ pairs around them fuse away (ONNX Runtime's QDQ transformers; TVM QNN and TensorRT fuse
# the same patterns). Around any other op, the Q/DQ nodes run.
_INT8_KERNELS = frozenset(
    {
        "Conv",
        "ConvTranspose",
        "Gemm",
        "MatMul",
        "Add",
        "Mul",
        "Relu",
        "Clip",
        "LeakyRelu",
        "Sigmoid",
        "HardSigmoid",
        "AveragePool",
        "GlobalAveragePool",
        "MaxPool",
        "Concat",
        "Reshape",
        "Flatten",
        "Transpose",
        "Squeeze",
        "Unsqueeze",
        "Resize",
        "Gather",
        "Split",
        "Slice",
        "Softmax",
    }
)


@dataclass(frozen=True)
class LayerCost:
    """The cost of one node.

    Attributes:
        name: Node name (or ``op_index`` when unnamed).
        op: Op type.
        output_shape: Shape of the first output (``None`` dims unknown).
        macs: Multiply-accumulates.
        params: Weight elements (initializer inputs).
        activation_bytes: Bytes of the node's non-weight inputs and outputs at fp32.
        latency_ms: Estimated latency on the target.
    """

    name: str
    op: str
    output_shape: tuple[int | None, ...]
    macs: int
    params: int
    activation_bytes: int
    latency_ms: float


def _shapes(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}
    values = [*model.graph.input, *model.graph.value_info, *model.graph.output]
    for value in values:
        tensor = value.type.tensor_type
        if tensor.HasField("shape"):
            shapes[value.name] = tuple(
                d.dim_value if d.HasField("dim_value") else 0 for d in tensor.shape.dim
            )
    for init in model.graph.initializer:
        shapes[init.name] = tuple(init.dims)
    return shapes


def _numel(shape: tuple[int, ...] | None) -> int:
    return int(np.prod(shape)) if shape else (1 if shape == () else 0)


def _attr(node: onnx.NodeProto, name: str, default):
    for attr in node.attribute:
        if attr.name == name:
            return onnx.helper.get_attribute_value(attr)
    return default


def node_macs(node: onnx.NodeProto, shapes: dict[str, tuple[int, ...]]) -> int:
    """Multiply-accumulates of one node (0 when shapes are unknown)."""
    out = shapes.get(node.output[0]) if node.output else None
    ins = [shapes.get(name) for name in node.input]
    op = node.op_type
    if op in ("Conv", "ConvInteger", "QLinearConv") and len(ins) > 1:
        weight = ins[3] if op == "QLinearConv" else ins[1]
        if weight and out:
            group = int(_attr(node, "group", 1))
            # each output element needs (C_in / group) * kH * kW MACs = weight[1:] elements
            return _numel(out) * _numel(weight[1:]) if group else 0
    if op == "ConvTranspose" and len(ins) > 1 and ins[0] and ins[1]:
        group = int(_attr(node, "group", 1))
        weight = ins[1]  # [C_in, C_out / group, k...]
        return _numel(ins[0]) * _numel(weight[1:]) if group else 0
    if op in ("Gemm", "MatMul", "MatMulInteger", "QLinearMatMul") and out:
        a = ins[0]
        if a:
            trans_a = int(_attr(node, "transA", 0)) if op == "Gemm" else 0
            k = a[-2] if trans_a else a[-1]
            return _numel(out) * k
    if op in ("LSTM", "GRU", "RNN") and ins[0] and len(ins) > 2 and ins[1] and ins[2]:
        seq, batch = ins[0][0], ins[0][1]
        return seq * batch * (_numel(ins[1][1:]) + _numel(ins[2][1:]))
    if out:
        # Elementwise, pooling, normalisation: about one operation per output element.
        return _numel(out) // 2
    return 0


def layer_costs(
    model: onnx.ModelProto, target: Target, backend: str = "onnxruntime", precision: str = "fp32"
) -> list[LayerCost]:
    """Per-node costs of a shape-inferred model on ``target`` (one per node, in graph order;
    Q/DQ nodes the backend fuses cost 0, see the module docstring)."""
    shapes = _shapes(model)
    weights = {init.name for init in model.graph.initializer}
    nodes = list(model.graph.node)
    outputs = {o.name for o in model.graph.output}
    plan = _int8_plan(nodes, weights, outputs, shapes) if precision == "int8" else None
    if plan is not None:
        weights |= plan.folded_weights
    peaks = {p: _peaks(target, backend, p) for p in {precision, "fp32"}}
    factors = target.cost_model
    costs = []
    for index, node in enumerate(nodes):
        node_precision = precision
        if plan is not None:
            node_precision = "int8" if index in plan.integer else "fp32"
        macs = node_macs(node, shapes)
        params = sum(_numel(shapes.get(n)) for n in node.input if n in weights)
        act_elems = sum(_numel(shapes.get(n)) for n in node.input if n and n not in weights)
        act_elems += sum(_numel(shapes.get(n)) for n in node.output if n)
        if plan is not None and index in plan.fused:
            latency_ms = 0.0  # folded into a constant or into the neighbouring integer kernel
        else:
            peak_ops, bandwidth = peaks[node_precision]
            moved = (act_elems + params) * _BYTES.get(node_precision, 4)
            compute_s = 2 * macs / (peak_ops * factors.compute_efficiency)
            memory_s = moved / (bandwidth * factors.memory_efficiency)
            latency_ms = max(compute_s, memory_s) * 1e3 + factors.op_overhead_us / 1e3
        costs.append(
            LayerCost(
                name=node.name or f"{node.op_type}_{index}",
                op=node.op_type,
                output_shape=shapes.get(node.output[0], ()) if node.output else (),
                macs=int(macs),
                params=int(params),
                activation_bytes=int(act_elems * 4),
                latency_ms=latency_ms,
            )
        )
    return costs


@dataclass(frozen=True)
class _Int8Plan:
    """How a backend runs a QDQ graph.

    Attributes:
        integer: Indices of the ops that run on integer kernels.
        fused: Indices of the Q/DQ nodes that cost nothing.
        folded_weights: Outputs of the weights' DequantizeLinear (constants, like weights).
    """

    integer: frozenset[int]
    fused: frozenset[int]
    folded_weights: frozenset[str]


def _int8_plan(
    nodes: list[onnx.NodeProto],
    weights: set[str],
    outputs: set[str],
    shapes: dict[str, tuple[int, ...]],
) -> _Int8Plan:
    """Which ops of an ``int8`` estimate run on integer kernels and which Q/DQ nodes fuse.

    A graph without Q/DQ nodes is priced as fully quantized (every op integer, nothing fused).
    """
    if not any(node.op_type in _QDQ for node in nodes):
        return _Int8Plan(frozenset(range(len(nodes))), frozenset(), frozenset())
    producer = {out: i for i, node in enumerate(nodes) for out in node.output if out}
    consumers: dict[str, list[int]] = {}
    for i, node in enumerate(nodes):
        for name in node.input:
            if name:
                consumers.setdefault(name, []).append(i)
    folded: set[str] = set()
    activation_dq: set[str] = set()
    for node in nodes:
        if node.op_type == "DequantizeLinear" and node.output:
            if node.input[0] in weights:
                folded.add(node.output[0])
                shapes.setdefault(node.output[0], shapes.get(node.input[0], ()))
            else:
                activation_dq.add(node.output[0])
    integer = {
        i
        for i, node in enumerate(nodes)
        if node.op_type in _INT8_KERNELS and any(n in activation_dq for n in node.input)
    }
    fused = set()
    for i, node in enumerate(nodes):
        if node.op_type == "DequantizeLinear" and node.output:
            uses = consumers.get(node.output[0], [])
            # A weight's DQ is a constant; an activation's DQ fuses into the integer kernels
            # it feeds (not into an FP32 op or a graph output, where it runs).
            feeds_integer = uses and all(u in integer for u in uses)
            if node.output[0] in folded or (feeds_integer and node.output[0] not in outputs):
                fused.add(i)
        elif node.op_type == "QuantizeLinear" and producer.get(node.input[0]) in integer:
            fused.add(i)  # an integer kernel writes its output quantized: the Q is free
    return _Int8Plan(frozenset(integer), frozenset(fused), frozenset(folded))


def _uses_accelerator(target: Target, backend: str) -> bool:
    """Whether the backend's artifact for ``target`` runs on its accelerator (the backend
    says; an unregistered name runs on the CPU)."""
    if backend not in backend_names():
        return False
    return get_backend(backend).uses_accelerator(target)


def _peaks(target: Target, backend: str, precision: str) -> tuple[float, float]:
    """Peak ops/s and bytes/s of the unit that runs ``backend`` at ``precision``."""
    acc = target.accelerator
    if acc is not None and _uses_accelerator(target, backend):
        tera = {
            "int8": acc.peak_tops_int8,
            "fp16": acc.peak_tflops_fp16,
            "fp32": acc.peak_tflops_fp32 or acc.peak_tflops_fp16,
        }.get(precision)
        if tera:
            return tera * 1e12, acc.memory_bandwidth_gbps * 1e9
    cpu = target.cpu
    giga = cpu.peak_gops_int8 if precision == "int8" else cpu.peak_gflops_fp32
    return giga * 1e9, target.memory.bandwidth_gbps * 1e9


def total_macs(model: onnx.ModelProto) -> int:
    """Multiply-accumulates of a whole shape-inferred model (convolutions and matmuls only)."""
    shapes = _shapes(model)
    heavy = {
        "Conv",
        "ConvTranspose",
        "Gemm",
        "MatMul",
        "QLinearConv",
        "QLinearMatMul",
        "ConvInteger",
        "MatMulInteger",
        "LSTM",
        "GRU",
        "RNN",
    }
    return sum(node_macs(n, shapes) for n in model.graph.node if n.op_type in heavy)


def estimate_latency(
    model: onnx.ModelProto, target: Target, backend: str = "onnxruntime", precision: str = "fp32"
) -> LatencyStats:
    """Estimated latency of the whole model (layers run one after another).

    The estimate is a single number; p90/p99 are set 10%/25% above it to reflect the jitter
    measured devices show (scheduler, DVFS), so a budget gate at p99 is not optimistic.
    """
    total = sum(cost.latency_ms for cost in layer_costs(model, target, backend, precision))
    return LatencyStats(total, total * 1.10, total * 1.25, total * 1.05, "estimated", 0)
