"""The execution providers an ONNX Runtime stage on a GPU target asks the runtime to try.

On Jetson boards and GPU gateways ONNX Runtime is usually installed with its TensorRT and CUDA
execution providers. A stage built for a target whose accelerator is a GPU records, in its
manifest entry (``backend_options.execution_providers``), the providers to try in order with
their options:

1. ``TensorrtExecutionProvider``: FP16 when the stage is FP16 or the target lists fp16; INT8
   when the stage is INT8 (see below); an engine cache whose directory is the template
   :data:`ENGINE_CACHE_TEMPLATE`. TensorRT engines are not portable across GPUs, TensorRT
   versions or models, and the GPU and TensorRT version are known only on the device, so the
   generated runtime fills them in when it loads the stage (``edgec.runtime.loaders``).
2. ``CUDAExecutionProvider``.
3. ``CPUExecutionProvider``, always last.

INT8: edgec's INT8 stages are Q/DQ models. TensorRT builds an explicitly quantized engine from
the Q/DQ nodes and refuses a calibration table for a model that has any (ONNX Runtime's
TensorRT provider documentation, ``trt_int8_calibration_table_name``), so a Q/DQ stage gets
``trt_int8_enable`` alone. An INT8 stage without Q/DQ nodes gets its ranges as the table the
provider reads: ``calibration.flatbuffers`` (ONNX Runtime's own format, written next to the
artifact from the stage's ``calibration.json``), named by ``trt_int8_calibration_table_name``;
the provider reads it from the engine cache directory, where the runtime copies it.

The artifact of such a stage is optimised offline at the ``basic`` level only: higher levels
fuse nodes into CPU-specific kernels that neither TensorRT nor CUDA can take (ORT's docs: an
offline-optimised model must be optimised for the provider that runs it), so the runtime
applies ``extended`` optimisation when it opens the session, for whichever provider it got.

None of this has run on a GPU here: edgec never times TensorRT and never claims a TensorRT
latency.
"""

from __future__ import annotations

from pathlib import Path

import onnx

from edgec.passes.calibration_table import CalibrationTable
from edgec.targets.descriptor import Target

TENSORRT = "TensorrtExecutionProvider"
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
ENGINE_CACHE_TEMPLATE = "engines/{gpu}/{trt_version}/{stage_sha256}"
ORT_TABLE_NAME = "calibration.flatbuffers"
# The artifact's offline level, and the level the runtime applies when it opens the session.
ARTIFACT_LEVEL = "basic"
SESSION_LEVEL = "extended"
_QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})


def is_gpu_target(target: Target) -> bool:
    """Whether ``target``'s accelerator is a GPU (ONNX Runtime's GPU providers may run there)."""
    return target.accelerator is not None and target.accelerator.kind == "gpu"


def has_qdq(model: onnx.ModelProto) -> bool:
    """Whether the model has QuantizeLinear/DequantizeLinear nodes (explicit quantization)."""
    return any(node.op_type in _QDQ_OPS for node in model.graph.node)


def provider_plan(
    target: Target, precision: str, artifact: Path, stage_dir: Path
) -> tuple[list[dict], tuple[Path, ...]]:
    """The providers to try for a stage on a GPU target, and the files written for them.

    Args:
        target: The (GPU) target the stage runs on.
        precision: The stage's precision: ``fp32``, ``fp16`` or ``int8``.
        artifact: The built model the runtime loads.
        stage_dir: The stage's folder; an INT8 stage without Q/DQ nodes gets its
            ``calibration.flatbuffers`` there, from the ``calibration.json`` found there.

    Returns:
        ``[{"name": provider, "options": {...}}, ...]`` in the order to try, and the files
        written.
    """
    trt: dict = {
        "trt_fp16_enable": precision == "fp16" or "fp16" in target.precisions,
        "trt_int8_enable": False,
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": ENGINE_CACHE_TEMPLATE,
    }
    written: list[Path] = []
    if precision == "int8":
        table_json = stage_dir / "calibration.json"
        if has_qdq(onnx.load(artifact, load_external_data=False)):
            trt["trt_int8_enable"] = True  # explicit quantization: TensorRT reads the Q/DQ
        elif table_json.is_file():
            import json

            table = CalibrationTable.from_json(json.loads(table_json.read_text()))
            path = stage_dir / ORT_TABLE_NAME
            path.write_bytes(table.ort_tensorrt_table())
            written.append(path)
            trt.update(
                trt_int8_enable=True,
                trt_int8_calibration_table_name=ORT_TABLE_NAME,
                trt_int8_use_native_calibration_table=False,
            )
    plan = [
        {"name": TENSORRT, "options": trt},
        {"name": CUDA, "options": {}},
        {"name": CPU, "options": {}},
    ]
    return plan, tuple(written)
