"""The canonicalisation step: the model every backend and later step sees.

Runs the ``canonical`` pipeline (constant folding with size limits, onnxscript's default
rewrite rules, dead-code removal) to a fixed point and then ``finalize``. Old models that list
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

logger = logging.getLogger(__name__)


def canonicalize(model: onnx.ModelProto) -> onnx.ModelProto:
    """Return the canonical form of a loaded, shape-inferred model."""
    ir_model = ir.serde.deserialize_model(model)
    if ir_model.ir_version < 4:
        ir_model.ir_version = 4
    common.RemoveInitializersFromInputsPass()(ir_model)
    run_pipeline(ir_model, "canonical")
    run_pipeline(ir_model, "finalize", max_steps=1)
    result = ir.serde.serialize_model(ir_model)
    result = onnx.shape_inference.infer_shapes(result, strict_mode=False, data_prop=True)
    onnx.checker.check_model(result)
    return result
