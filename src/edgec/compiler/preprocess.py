"""``--preprocess`` in the compile: plan the kernel, attach it to stage models, feed it frames.

The kernel is attached to every stage's model after canonicalisation (so students derived from
the canonical model get the same front end), the manifest's ``inputs`` then describe the frame
(:meth:`PreprocessPlan.frame_json`), and ``--data`` must hold frames too: the stages are
evaluated exactly as the device will run them.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import onnx_ir as ir
import onnx_ir.passes.common as common

from edgec.compiler.loading import LoadedModel
from edgec.data import Dataset
from edgec.errors import BadInputError
from edgec.kernels.preprocess import (
    PreprocessPlan,
    PreprocessSpec,
    plan_preprocess,
    preprocess_reference,
)
from edgec.passes.fuse_preprocess import FusePreprocessPass


def plan_for_model(spec: PreprocessSpec, loaded: LoadedModel) -> PreprocessPlan:
    """Resolve ``spec`` against the model's single input.

    Raises:
        BadInputError: The model has more than one input, or the input does not fit the spec.
    """
    if len(loaded.inputs) != 1:
        names = ", ".join(i.name for i in loaded.inputs)
        raise BadInputError(
            f"--preprocess needs a model with one image input; {loaded.path.name} has "
            f"{len(loaded.inputs)} ({names})."
        )
    tensor = loaded.inputs[0]
    return plan_preprocess(spec, tensor.name, tensor.shape, tensor.dtype, tensor.layout)


def attach_preprocess(model: onnx.ModelProto, plan: PreprocessPlan) -> onnx.ModelProto:
    """``model`` with the pre-processing kernel in front (shape-inferred and checked)."""
    ir_model = ir.serde.deserialize_model(model)
    FusePreprocessPass(plan)(ir_model)
    common.NameFixPass()(ir_model)
    result = ir.serde.serialize_model(ir_model)
    result = onnx.shape_inference.infer_shapes(result, strict_mode=False, data_prop=True)
    onnx.checker.check_model(result)
    return result


def frames_dataset(data: Dataset, plan: PreprocessPlan) -> Dataset:
    """``data`` as frames of the plan's shape and element type.

    Raises:
        BadInputError: Samples are not frames of that shape, or (uint8 frames) not whole
            numbers in 0..255.
    """
    sample = tuple(data.x_val.shape[1:])
    if sample != plan.frame_shape[1:]:
        raise BadInputError(
            f"With --preprocess, data must be camera frames: '{data.name}' has samples of shape "
            f"{list(sample)} but the frame is {list(plan.frame_shape[1:])} "
            f"({plan.spec.layout}, after the batch dimension)."
        )
    if plan.spec.dtype == "uint8":
        values = np.concatenate([data.x_train.reshape(-1), data.x_val.reshape(-1)])
        if values.size and (
            values.min() < 0 or values.max() > 255 or not np.all(values == np.round(values))
        ):
            raise BadInputError(
                f"With --preprocess uint8, data '{data.name}' must hold whole pixel values 0..255."
            )
    dtype = np.dtype(plan.spec.dtype)
    return dataclasses.replace(
        data, x_train=data.x_train.astype(dtype), x_val=data.x_val.astype(dtype)
    )


def tensors_dataset(frames: Dataset, plan: PreprocessPlan) -> Dataset:
    """``frames`` turned into model tensors by the NumPy reference kernel (for training)."""
    return dataclasses.replace(
        frames,
        x_train=preprocess_reference(frames.x_train, plan),
        x_val=preprocess_reference(frames.x_val, plan),
    )
