"""Why INT8 is slow (or not faster) on a target with ONNX Runtime: ``explain_int8``.

The explanation has two parts, each a list of plain sentences:

* **the target** — whether it lists INT8 at all; on x86, whether it has AVX2 and VNNI
  (``VPDPBUSD`` multiplies u8 by s8 and accumulates in 32 bits; without it ORT uses
  ``VPMADDUBSW``, which goes through 16-bit intermediates that can saturate, and INT8 peaks at
  about twice FP32 instead of four times); on ARM, whether it has the dot-product instructions
  (``SDOT``/``UDOT``, ARMv8.2);
* **the model** — read as written and as ONNX Runtime optimises it for the target (level
  ``all`` on this machine, the portable ``extended`` elsewhere, as the backend builds it):
  compute nodes (Conv, MatMul, Gemm) left in FP32 between DequantizeLinear and QuantizeLinear
  (Q/DQ pairs ORT did not fuse into integer kernels), int8 activations on x86 (the usual
  reason for those: ORT's x86 build has no int8 Add, so convolutions around residual
  connections stay FP32), depthwise convolutions with per-tensor weight scales, Transposes the
  layout pass added around unfused nodes, and small re-quantizing element-wise ops such as the
  squeeze-and-excitation blocks of MobileNetV3/EfficientNet. Which Q/DQ pairs ORT fuses depends
  on the CPU it runs on, so that part is only read for targets of this machine's architecture.

Nothing is measured here; it is a reading of the graph and the descriptor.
"""

from __future__ import annotations

import platform
import tempfile
from collections import Counter
from pathlib import Path

import onnx
from onnx import numpy_helper

from edgec.runtime.loaders import session_options
from edgec.targets.descriptor import Target, load_target

_COMPUTE = ("Conv", "ConvTranspose", "MatMul", "Gemm")
_INT8_OPS = frozenset(
    {
        "QuantizeLinear",
        "DequantizeLinear",
        "QLinearConv",
        "QLinearMatMul",
        "QGemm",
        "ConvInteger",
        "MatMulInteger",
        "DynamicQuantizeLinear",
    }
)
_QLINEAR_ELEMENTWISE = frozenset(
    {
        "QLinearAdd",
        "QLinearMul",
        "QLinearSigmoid",
        "QLinearLeakyRelu",
        "QLinearGlobalAveragePool",
        "QLinearAveragePool",
        "QLinearConcat",
        "QLinearSoftmax",
    }
)
_QLINEAR_GATING = frozenset({"QLinearMul", "QLinearSigmoid", "QLinearLeakyRelu", "QLinearSoftmax"})
_VNNI = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})
_DOTPROD = frozenset({"dotprod", "asimddp"})
_EXAMPLES = 3


def explain_int8(
    model_path_or_proto: str | Path | onnx.ModelProto, target: Target | str
) -> list[str]:
    """Sentences explaining what makes INT8 slow for this model on ``target``.

    Args:
        model_path_or_proto: An ONNX model (usually a Q/DQ model, e.g. a bundle's
            ``stages/<name>/model.onnx``) as a path or a proto.
        target: A :class:`Target` or a target name / descriptor path.

    Returns:
        The findings, most important first; a single sentence when nothing was found.
    """
    target = load_target(target) if isinstance(target, str) else target
    model = (
        model_path_or_proto
        if isinstance(model_path_or_proto, onnx.ModelProto)
        else onnx.load(str(model_path_or_proto))
    )
    findings = _target_findings(target)
    ops = Counter(node.op_type for node in model.graph.node)
    if not (set(ops) & _INT8_OPS):
        findings.append(
            "The model has no INT8 operators (no QuantizeLinear/DequantizeLinear or QLinear "
            "nodes): it runs in FP32; compile it with --precision int8 to quantize it."
        )
        return findings
    optimised, unfused = _optimised_findings(model, target)
    # s8 activations only cost speed where ORT leaves their nodes unfused; when the optimised
    # graph could be read here and shows none, that finding would be noise.
    findings += _model_findings(model, target, report_signed=unfused is None or unfused > 0)
    findings += optimised
    if not findings:
        findings.append(
            f"No INT8 slow-down found: {target.name} has native INT8 dot products and ONNX "
            "Runtime fuses every quantized Conv/MatMul/Gemm into an integer kernel."
        )
    return findings


def _target_findings(target: Target) -> list[str]:
    findings = []
    if "int8" not in target.precisions:
        findings.append(
            f"{target.name} lists no INT8 precision ({', '.join(target.precisions)}): INT8 is "
            "not native there and edgec keeps its stages in FP32."
        )
    arch = target.cpu.arch.lower()
    features = set(target.cpu.isa_features)
    ratio = target.cpu.peak_gops_int8 / target.cpu.peak_gflops_fp32
    if arch in ("x86_64", "amd64", "x86"):
        if "avx2" not in features and "avx512f" not in features:
            findings.append(
                f"{target.name} has no AVX2: ONNX Runtime's INT8 kernels fall back to SSE and "
                "are usually slower than its FP32 kernels."
            )
        elif not features & _VNNI:
            findings.append(
                f"{target.name} has no VNNI (AVX512-VNNI/AVX-VNNI): u8 x s8 products go through "
                "VPMADDUBSW with 16-bit intermediates (which can saturate: quantize weights "
                "with reduce_range), so INT8 peaks at about 2x FP32, not 4x "
                f"(descriptor: {ratio:.1f}x)."
            )
    elif arch.startswith(("aarch64", "arm")) and not features & _DOTPROD:
        findings.append(
            f"{target.name} ({target.cpu.model}) has no dot-product instructions (SDOT/UDOT, "
            "ARMv8.2): INT8 convolutions use widening multiply-accumulates and reach about 2x "
            f"FP32 at best (descriptor: {ratio:.1f}x)."
        )
    return findings


def _producers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {out: node for node in model.graph.node for out in node.output}


def _constants(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    found = {init.name: init for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].HasField("t"):
            found[node.output[0]] = node.attribute[0].t
    return found


def _model_findings(model: onnx.ModelProto, target: Target, report_signed: bool) -> list[str]:
    findings = []
    constants = _constants(model)
    producers = _producers(model)
    x86 = target.cpu.arch.lower() in ("x86_64", "amd64", "x86")
    signed = unsigned = 0
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear" and len(node.input) > 2 and node.input[2] in constants:
            dtype = constants[node.input[2]].data_type
            signed += dtype == onnx.TensorProto.INT8
            unsigned += dtype == onnx.TensorProto.UINT8
    if x86 and signed and report_signed:
        findings.append(
            f"{signed} activations are quantized to int8 (s8s8): on x86 ONNX Runtime lacks "
            "int8 kernels for some ops (residual Adds among them), so they and the "
            "convolutions next to them run as DequantizeLinear -> FP32 op -> QuantizeLinear; "
            "quantize activations to uint8 (u8s8) instead."
        )
    depthwise = []
    for node in model.graph.node:
        if node.op_type != "Conv":
            continue
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        weight = producers.get(node.input[1]) if len(node.input) > 1 else None
        if group <= 1 or weight is None or weight.op_type != "DequantizeLinear":
            continue
        scale = constants.get(weight.input[1])
        if scale is not None and numpy_helper.to_array(scale).size == 1:
            depthwise.append(node.name or node.output[0])
    if depthwise:
        findings.append(
            f"{len(depthwise)} depthwise/grouped Conv have per-tensor INT8 weights "
            f"({_names(depthwise)}): one scale for filters whose ranges differ widely costs "
            "accuracy, and these convolutions are memory-bound, so INT8 gains little on "
            "them; quantize per-channel or keep them FP32."
        )
    return findings


def _optimised(model: onnx.ModelProto, target: Target) -> onnx.ModelProto | None:
    import onnxruntime as ort

    level = "all" if target.is_host else "extended"
    with tempfile.TemporaryDirectory(prefix="edgec-explain-") as tmp:
        source, optimised = Path(tmp) / "model.onnx", Path(tmp) / "optimised.onnx"
        onnx.save_model(model, source)
        options = session_options(level, threads=1)
        options.optimized_model_filepath = str(optimised)
        try:
            ort.InferenceSession(str(source), options, providers=["CPUExecutionProvider"])
        except Exception:  # an unloadable model: the static findings still stand
            return None
        return onnx.load(optimised)


def _same_arch(target: Target) -> bool:
    def family(arch: str) -> str:
        arch = arch.lower()
        return "x86" if arch in ("x86_64", "amd64", "x86", "i686") else arch.split("_")[0]

    return target.is_host or family(target.cpu.arch) == family(platform.machine())


def _optimised_findings(model: onnx.ModelProto, target: Target) -> tuple[list[str], int | None]:
    """Findings from ORT's optimised graph, and how many compute nodes it left unfused
    (``None`` when the graph cannot be read here)."""
    if not _same_arch(target):
        return [
            f"Which Q/DQ pairs ONNX Runtime fuses depends on the CPU it runs on; this machine "
            f"({platform.machine()}) cannot show what it does on {target.name} "
            f"({target.cpu.arch}): run `edgec inspect --precision int8` there."
        ], None
    optimised = _optimised(model, target)
    where = "on this machine" if target.is_host else "at the portable 'extended' level"
    if optimised is None:
        return [f"ONNX Runtime cannot load the model {where}, so its fusions are unknown."], None
    findings = []
    producers = _producers(optimised)
    unfused = [
        node.name or node.output[0]
        for node in optimised.graph.node
        if node.op_type in _COMPUTE
        and any(
            (p := producers.get(name)) is not None and p.op_type == "DequantizeLinear"
            for name in node.input[:1]
        )
    ]
    ops = Counter(node.op_type for node in optimised.graph.node)
    if unfused:
        total = sum(ops[op] for op in _COMPUTE) + ops["QLinearConv"] + ops["QLinearMatMul"]
        total += ops["QGemm"] + ops["MatMulInteger"] + ops["ConvInteger"]
        findings.append(
            f"{len(unfused)} of {total} Conv/MatMul/Gemm nodes still run in FP32 between "
            f"DequantizeLinear and QuantizeLinear after ONNX Runtime's optimisation {where} "
            f"(unfused Q/DQ pairs, e.g. {_names(unfused)}): each pays for the FP32 op plus "
            "the conversions."
        )
    if ops["Transpose"] and unfused:
        findings.append(
            f"The optimised graph has {ops['Transpose']} Transpose nodes: ONNX Runtime's layout "
            "pass wraps the unfused nodes in NCHW/NHWC conversions."
        )
    small = sum(ops[op] for op in _QLINEAR_ELEMENTWISE)
    gating = sum(ops[op] for op in _QLINEAR_GATING)
    compute = ops["QLinearConv"] + ops["QLinearMatMul"] + ops["QGemm"]
    # Residual Adds and a final pooling are normal (ResNet, MobileNetV2 gain well); gating
    # multiplies and sigmoids in numbers comparable to the convolutions are the SE pattern.
    if gating >= 2 and small * 2 >= compute:
        kinds = _names(sorted(set(ops) & _QLINEAR_ELEMENTWISE))
        findings.append(
            f"{small} quantized element-wise/pooling ops ({kinds}) sit among {compute} integer "
            "Conv/MatMul/Gemm: each re-quantizes its output, and on small tensors "
            "(squeeze-and-excitation blocks, activations) that overhead can eat INT8's gain; "
            "keeping those ops in FP32 can be faster."
        )
    return findings, len(unfused)


def _names(names: list[str]) -> str:
    shown = ", ".join(f"'{n}'" for n in names[:_EXAMPLES])
    return shown + (f" and {len(names) - _EXAMPLES} more" if len(names) > _EXAMPLES else "")
