"""The canonicalisation step: the model every backend and later step sees.

Runs the ``canonical`` pipeline (constant folding with size limits; Dropout, no-op and Sum
rewrites; BatchNormalization, scale/shift and Pad folding; onnxscript's other default rewrite
rules; dead-code removal; fusion annotations — see :mod:`edgec.passes.pipelines`) to a fixed
point and then ``finalize``. Old models that list
initializers as graph inputs (IR version < 4, e.g. Caffe2 exports) have them removed from the
inputs and the IR version raised to 4, which permits that; the opset is left as it is. The
result is shape-inferred again and checked: if the check fails, that is a bug in a pass.
"""

from __future__ import annotations

import logging

import onnx
import onnx_ir as ir
import onnx_ir.passes.common as common

from edgec.passes import run_pipeline
from edgec.passes.instrument import PassInstrument

logger = logging.getLogger(__name__)


def _lower_ir_version(model: onnx.ModelProto) -> None:
    """Lower the IR version to the least the model's opsets need.

    Exporters stamp the newest IR version they know (IR 14 from onnx 1.23) even when the
    opsets need far less, and older runtimes refuse it (ONNX Runtime 1.31 stops at IR 13,
    TensorRT 8.2's parser earlier); nothing in the file changes meaning.
    """
    try:
        needed = onnx.helper.find_min_ir_version_for(list(model.opset_import), ignore_unknown=True)
    except (ValueError, KeyError):  # an opset newer than this onnx knows: leave it alone
        return
    if model.ir_version > max(needed, 4):
        logger.info("IR version %d lowered to %d", model.ir_version, max(needed, 4))
        model.ir_version = max(needed, 4)


def canonicalize(
    model: onnx.ModelProto, instrument: PassInstrument | None = None
) -> onnx.ModelProto:
    """Return the canonical form of a loaded, shape-inferred model.

    Args:
        model: The model (not changed).
        instrument: Records per-pass time and node counts, and dumps the IR, when given
            (``--time-passes``, ``--dump-ir``).
    """
    ir_model = ir.serde.deserialize_model(model)
    if ir_model.ir_version < 4:
        ir_model.ir_version = 4
    common.RemoveInitializersFromInputsPass()(ir_model)
    run_pipeline(ir_model, "canonical", instrument=instrument)
    run_pipeline(ir_model, "finalize", max_steps=1, instrument=instrument)
    result = ir.serde.serialize_model(ir_model)
    _lower_ir_version(result)
    result = onnx.shape_inference.infer_shapes(result, strict_mode=False, data_prop=True)
    onnx.checker.check_model(result)
    return result
