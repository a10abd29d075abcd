"""Per-stage FP16: a stage converted to FP16 (float32 I/O) where a GPU runs it, judged by the guard.

**When.** ``--precision fp16`` asks for it; ``--precision auto`` chooses it for a stage whose
target lists ``fp16`` among its precisions *and* whose backend runs that target's stages on its
accelerator (:meth:`~edgec.targets.base.Backend.uses_accelerator`: TVM CUDA on the Jetsons and
the T4). A CPU-only target (or a backend that runs the stage on the CPU) cannot run FP16
arithmetic natively: ``--precision fp16`` there is refused before any work
(:func:`check_fp16_request`), ``auto`` keeps such stages on the INT8/FP32 path.

**How.** ``onnxconverter-common``'s ``float16.convert_float_to_float16`` with
``keep_io_types=True``: weights become FP16 initializers, a ``Cast`` at the graph's input and
output keeps the stage's interface float32, so the runtime, the cascade and the data are
unchanged. Ops in :data:`FP32_OPS` stay FP32 (the converter wraps them in casts): the
converter's own default list (ops with no FP16 kernel or index/ML semantics: ``TopK``,
``NonMaxSuppression``, ``Resize``, ``Range``, ``CumSum``, the ``ai.onnx.ml`` ops, ...) plus ops
whose FP16 result overflows or loses the answer: sums over many elements (``Reduce*``,
``LayerNormalization``, whose variance of large activations exceeds FP16's 65504),
exponentials and powers (``Exp``, ``Pow``, ``Softmax``, ``LogSoftmax``: ``exp(11.1)`` already
overflows FP16), and ``Log``/``Sqrt``/``Reciprocal``/``Div`` near zero (FP16's smallest normal
is 6.1e-5).

**The guard.** The stage's FP32 model and its FP16 form are compared on the validation split
with the INT8 guard's verdict (:func:`edgec.compiler.int8.accuracy_guard.judge`: accuracy drop
with labels, confident agreement and logits SQNR without), and in every case the logits must be
finite and reach :data:`MIN_SQNR_DB` (FP16 reproduces FP32 to 45-65 dB on the benchmark models;
far less means an overflow somewhere). This machine has no FP16 arithmetic for most ops (ONNX
Runtime's CPU provider computes them in FP32 between casts, so activations would never be
rounded): the guard therefore runs an *emulation* on ONNX Runtime — the FP32 graph with every
weight, the input and every float activation of a converted op rounded to FP16 (a
``Cast`` to FP16 and back after each), arithmetic in FP32 as GPU FP16 kernels accumulate. A
failing stage stays FP32 under ``auto``; an explicit ``fp16`` fails the compile (exit 1).
Without ``--data`` ``auto`` keeps FP32 (nothing to judge with) and an explicit ``fp16``
converts unchecked, saying so.
"""

from __future__ import annotations

import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgec.compiler.evaluate import predict
from edgec.compiler.int8.accuracy_guard import GuardVerdict, judge
from edgec.compiler.int8.precision import MAX_GUARD_SAMPLES, PrecisionOptions
from edgec.compiler.planning.cost_model import estimate_latency
from edgec.data import Dataset
from edgec.errors import BadInputError, GateFailedError
from edgec.targets.base import Backend
from edgec.targets.descriptor import Target

MIN_SQNR_DB = 30.0
# Numerically fragile in FP16 (see the module docstring); the converter's defaults are added.
_FRAGILE = (
    "ReduceSum",
    "ReduceMean",
    "ReduceSumSquare",
    "ReduceL2",
    "ReduceLogSumExp",
    "LayerNormalization",
    "Exp",
    "Pow",
    "Softmax",
    "LogSoftmax",
    "Log",
    "Sqrt",
    "Reciprocal",
    "Div",
)
EMULATED_WITH = (
    "onnxruntime CPU on an FP16 emulation of the stage (weights, input and every converted "
    "op's float output rounded to FP16, arithmetic in FP32): this CPU has no FP16 kernels"
)


def fp32_ops() -> list[str]:
    """The op types kept FP32 inside an FP16 stage: the converter's default block list plus
    the fragile ops (sorted)."""
    from onnxconverter_common import float16

    return sorted({*float16.DEFAULT_OP_BLOCK_LIST, *_FRAGILE})


def runs_fp16(target: Target, backend: Backend) -> tuple[bool, str]:
    """Whether ``backend`` runs ``target``'s stages in FP16 on its accelerator, and why not."""
    if "fp16" not in target.precisions:
        return False, (
            f"target '{target.name}' does not list FP16 among its precisions "
            f"({', '.join(target.precisions)})"
        )
    if target.accelerator is None or not backend.uses_accelerator(target):
        return False, (
            f"the {backend.name} backend runs {target.name}'s stages on its CPU, which has no "
            "FP16 arithmetic worth using"
        )
    return True, ""


def check_fp16_request(requested: str, target: Target, backend: Backend) -> None:
    """Refuse ``--precision fp16`` where no accelerator runs FP16, before any work.

    Raises:
        BadInputError: ``fp16`` on a CPU-only target, or with a backend that runs on the CPU.
    """
    if requested != "fp16":
        return
    ok, why = runs_fp16(target, backend)
    if not ok:
        from edgec.targets.registry import buildable, get_backend, preferences

        on_gpu = [
            n
            for n in preferences(target)
            if runs_fp16(target, get_backend(n))[0] and buildable(n, target)[0]
        ]
        other = f"--backend {on_gpu[0]} (it builds for the GPU), or " if on_gpu else ""
        raise BadInputError(
            f"--precision fp16 needs a GPU that runs FP16, but {why}; use {other}"
            "--precision fp32, int8 or auto."
        )


def wants_fp16(requested: str, target: Target, backend: Backend) -> bool:
    """Whether a stage on ``target`` built by ``backend`` takes the FP16 path."""
    if requested == "fp16":
        return True
    return requested == "auto" and runs_fp16(target, backend)[0]


def to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model in FP16 with float32 inputs and outputs (:data:`FP32_OPS` kept FP32)."""
    from onnxconverter_common import float16

    with warnings.catch_warnings():
        # It warns once per weight it clamps to FP16's range (1e-7 .. 65504): expected.
        warnings.simplefilter("ignore", UserWarning)
        converted = float16.convert_float_to_float16(
            model, keep_io_types=True, op_block_list=fp32_ops()
        )
    _float_outputs(converted, model)
    onnx.checker.check_model(converted)
    return converted


def _float_outputs(converted: onnx.ModelProto, original: onnx.ModelProto) -> None:
    """Make every output float32 again where the original's was.

    ``keep_io_types`` misses outputs made by a block-listed op (a final ``Softmax``): the
    converter casts them to FP16 on their way out. That cast becomes a cast to float32 (its
    input is the FP32 op's output); any other FP16 output gets a cast appended.
    """
    wanted = {v.name for v in original.graph.output if v.type.tensor_type.elem_type == 1}
    producers = {out: node for node in converted.graph.node for out in node.output}
    for value in converted.graph.output:
        tensor = value.type.tensor_type
        if value.name not in wanted or tensor.elem_type != TensorProto.FLOAT16:
            continue
        node = producers.get(value.name)
        if node is not None and node.op_type == "Cast":
            for attribute in node.attribute:
                if attribute.name == "to":
                    attribute.i = TensorProto.FLOAT
        else:
            half = f"{value.name}__fp16"
            for other in converted.graph.node:
                other.output[:] = [half if o == value.name else o for o in other.output]
                other.input[:] = [half if i == value.name else i for i in other.input]
            cast = helper.make_node("Cast", [half], [value.name], to=TensorProto.FLOAT)
            converted.graph.node.append(cast)
        tensor.elem_type = TensorProto.FLOAT


def emulation(model: onnx.ModelProto) -> onnx.ModelProto:
    """The FP32 ``model`` with FP16 rounding where the FP16 stage stores FP16: weights used by
    converted ops, and every float output of a converted op (feed it FP16-rounded inputs)."""
    blocked = set(fp32_ops())
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {
        v.name: v.type.tensor_type.elem_type
        for v in (*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input)
    }
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    converted = [n for n in graph.node if n.op_type not in blocked]
    used = {name for n in converted for name in n.input}
    for init in graph.initializer:
        if init.data_type == TensorProto.FLOAT and init.name in used:
            rounded = numpy_helper.to_array(init).astype(np.float16).astype(np.float32)
            init.CopyFrom(numpy_helper.from_array(rounded, init.name))
    nodes = []
    for node in graph.node:
        nodes.append(node)
        if node.op_type in blocked:
            continue
        for i, name in enumerate(node.output):
            if not name or types.get(name) != TensorProto.FLOAT:
                continue
            node.output[i] = f"{name}__fp32"
            nodes.append(
                helper.make_node(
                    "Cast", [f"{name}__fp32"], [f"{name}__fp16"], to=TensorProto.FLOAT16
                )
            )
            nodes.append(helper.make_node("Cast", [f"{name}__fp16"], [name], to=TensorProto.FLOAT))
    del graph.node[:]
    graph.node.extend(nodes)
    return out


@dataclass
class Fp16Decision:
    """A stage's FP16-or-FP32 decision, in the form the driver applies (like the INT8 one).

    Attributes:
        precision: ``fp16`` or ``fp32``.
        model: The stage's model at that precision.
        requested: What the user asked for.
        decided_by: ``requested``, ``gpu-target`` (``auto`` on a GPU target), ``no-data`` or
            ``accuracy-guard`` (FP16 failed it: FP32 kept).
        reason: One sentence.
        verdict: The guard's verdict (``None`` without data).
        latency_ms: The cost model's p50 for ``fp32`` and ``fp16`` on the target.
        fp32_ops: The op types kept FP32 inside the FP16 graph that occur in this stage.
    """

    precision: str
    model: onnx.ModelProto
    requested: str
    decided_by: str
    reason: str
    verdict: GuardVerdict | None = None
    latency_ms: dict[str, float] = field(default_factory=dict)
    fp32_ops: list[str] = field(default_factory=list)

    def describe(self) -> str:
        """One line for the progress output."""
        return f"{self.precision.upper()}: {self.reason}"

    def manifest_fields(self) -> dict:
        """Fields for the stage's manifest entry (the INT8 decision's keys)."""
        guard = None
        if self.verdict is not None:
            guard = self.verdict.to_json()
            guard["fp16_accuracy"] = guard.pop("int8_accuracy")
            guard["measured_with"] = EMULATED_WITH
        return {
            "precision": self.precision,
            "int8_flavour": None,
            "fp32_layers": [],
            "fp32_ops": list(self.fp32_ops),
            "accuracy_guard": guard,
            "precision_decision": {
                "requested": self.requested,
                "chosen": self.precision,
                "decided_by": self.decided_by,
                "reason": self.reason,
                "converter": _converter_version(),
                "latency_ms": {k: round(v, 4) for k, v in self.latency_ms.items()},
                "latency_source": "estimated" if self.latency_ms else None,
                "candidates": [],
                "guard_steps": [],
            },
        }


def _converter_version() -> str:
    import importlib.metadata

    return f"onnxconverter-common {importlib.metadata.version('onnxconverter-common')}"


def _subset(data: Dataset, seed: int) -> tuple[np.ndarray, np.ndarray | None]:
    x, y = data.x_val, data.y_val if data.has_labels else None
    if len(x) <= MAX_GUARD_SAMPLES:
        return x, y
    keep = np.sort(np.random.default_rng(seed).permutation(len(x))[:MAX_GUARD_SAMPLES])
    return x[keep], None if y is None else y[keep]


def judge_fp16(
    model: onnx.ModelProto, data: Dataset, options: PrecisionOptions
) -> tuple[GuardVerdict, bool]:
    """The guard's verdict on the emulated FP16 ``model`` against FP32, and whether it passes
    (the verdict, finite logits and at least :data:`MIN_SQNR_DB`)."""
    from edgec.targets.onnxruntime.backend import OrtRunner

    x_val, y_val = _subset(data, options.seed)
    with tempfile.TemporaryDirectory(prefix="edgec-fp16-") as tmp:
        fp32_path, emulated_path = Path(tmp) / "fp32.onnx", Path(tmp) / "fp16.onnx"
        onnx.save_model(model, fp32_path)
        onnx.save_model(emulation(model), emulated_path)
        reference = predict(OrtRunner(fp32_path), x_val)
        # "basic": the extended optimizations would fuse across the rounding casts.
        emulated = predict(
            OrtRunner(emulated_path, level="basic"), x_val.astype(np.float16).astype(np.float32)
        )
    finite = bool(np.isfinite(emulated).all())
    if not finite:
        emulated = np.nan_to_num(emulated, nan=0.0, posinf=0.0, neginf=0.0)
    verdict = judge(reference, emulated, y_val, options.max_accuracy_drop, options.min_sqnr_db)
    return verdict, verdict.passed and finite and verdict.sqnr_db >= MIN_SQNR_DB


def decide_fp16(
    model: onnx.ModelProto,
    target: Target,
    backend: str,
    data: Dataset | None,
    options: PrecisionOptions,
    stage: str = "stage",
) -> Fp16Decision:
    """Convert one stage to FP16 and judge it (see the module docstring).

    Raises:
        GateFailedError: ``fp16`` was requested and FP16 fails the accuracy guard.
    """
    requested = options.requested
    converted = to_fp16(model)
    present = {n.op_type for n in model.graph.node}
    kept = [op for op in fp32_ops() if op in present]
    # Each precision's graph as it would ship: the casts the FP16 graph adds are priced too.
    latency = {
        "fp32": estimate_latency(model, target, backend, "fp32").p50,
        "fp16": estimate_latency(converted, target, backend, "fp16").p50,
    }
    decided_by = "requested" if requested == "fp16" else "gpu-target"
    why = "--precision fp16" if requested == "fp16" else f"{target.name}'s GPU runs FP16"
    if data is None:
        if requested != "fp16":
            return Fp16Decision(
                "fp32", model, requested, "no-data", "no --data to check FP16 against FP32 with"
            )
        reason = f"{why}; not checked against FP32 (no --data)"
        return Fp16Decision("fp16", converted, requested, decided_by, reason, None, latency, kept)
    verdict, passed = judge_fp16(model, data, options)
    summary = f"{verdict.summary().replace('INT8', 'FP16')}, SQNR floor {MIN_SQNR_DB:g} dB"
    if not passed:
        message = f"FP16 for stage '{stage}' misses the accuracy guard: {summary}"
        if requested == "fp16":
            raise GateFailedError(
                f"{message}; raise --max-accuracy-drop or use --precision auto to keep FP32."
            )
        return Fp16Decision("fp32", model, requested, "accuracy-guard", message, verdict, latency)
    reason = f"{why}; guard: {summary}"
    return Fp16Decision("fp16", converted, requested, decided_by, reason, verdict, latency, kept)
