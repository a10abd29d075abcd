"""``edgec inspect --precision int8``: why INT8 would be slow for a model on a target.

A model that is already quantized (Q/DQ or QLinear nodes: e.g. a bundle's
``stages/<name>/model.onnx``) is explained as it is. An FP32 model is first quantized the way
``edgec compile`` would for that target (the flavour of
:func:`edgec.compiler.int8.precision.rule_flavour`, or u8s8 per-channel on this machine's x86), with
ranges calibrated on random inputs: ranges change numbers, not which Q/DQ pairs ONNX Runtime
fuses, and inspection needs no data. The findings come from
:func:`edgec.targets.onnxruntime.int8_explain.explain_int8`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from edgec.compiler.canonicalize import canonicalize
from edgec.compiler.int8.precision import host_candidates, rule_flavour
from edgec.compiler.loading import load_model
from edgec.passes.quantize import calibrate, preprocess, quantize_model
from edgec.targets import load_target
from edgec.targets.onnxruntime.int8_explain import explain_int8

_QUANTIZED_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul"})
_RANDOM_SAMPLES = 8


def _random_inputs(model: onnx.ModelProto, count: int) -> np.ndarray:
    initializers = {init.name for init in model.graph.initializer}
    value = next(i for i in model.graph.input if i.name not in initializers)
    tensor = value.type.tensor_type
    shape = [d.dim_value or 1 for d in tensor.shape.dim]
    dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type)
    rng = np.random.default_rng(0)
    if np.issubdtype(dtype, np.integer):
        return rng.integers(0, 256, (count, *shape[1:])).astype(dtype)
    return rng.standard_normal((count, *shape[1:])).astype(dtype)


def explain_model_int8(
    path: Path,
    target: str = "host",
    input_shapes: dict[str, tuple[int, ...]] | None = None,
) -> list[str]:
    """Sentences explaining INT8 speed for the model at ``path`` on ``target``.

    Raises:
        BadInputError: A bad model, target or shape (as for ``edgec compile``).
    """
    resolved = load_target(target)
    loaded = load_model(Path(path), input_shapes or {})
    if {n.op_type for n in loaded.proto.graph.node} & _QUANTIZED_OPS:
        return explain_int8(loaded.proto, resolved)
    model = preprocess(canonicalize(loaded.proto))
    backend = resolved.backends[0]
    flavour = host_candidates(resolved)[0] if resolved.is_host else rule_flavour(resolved, backend)
    table = calibrate(model, _random_inputs(model, _RANDOM_SAMPLES))
    quantized = quantize_model(model, table, flavour)
    lead = (
        f"{Path(path).name} is FP32; read as edgec would quantize it for {resolved.name} "
        f"({flavour.name}, ranges from random inputs: they change numbers, not fusions)."
    )
    return [lead, *explain_int8(quantized, resolved)]
