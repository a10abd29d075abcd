"""Calibration inputs: checked once against the model they calibrate.

Both INT8 steps that run the model on calibration inputs (:mod:`edgec.passes.quantize` for the
activation ranges, :mod:`edgec.passes.bias_correction` for the per-channel output error) take
them through :func:`check_calibration_samples`, so a bad input is refused with the same
sentence whichever step meets it first.
"""

from __future__ import annotations

import numpy as np
import onnx

from edgec.errors import BadInputError


def model_input(model: onnx.ModelProto) -> onnx.ValueInfoProto:
    """The model's one real input (initializers listed as inputs are not).

    Raises:
        BadInputError: The model has more than one input, or none.
    """
    initializers = {init.name for init in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise BadInputError(
            f"INT8 calibration needs a model with one input; this one has {len(inputs)}."
        )
    return inputs[0]


def check_calibration_samples(model: onnx.ModelProto, samples: np.ndarray) -> np.ndarray:
    """Validate calibration samples against the model's single input; return them in its dtype.

    Raises:
        BadInputError: Not numeric, wrong sample shape, too few, NaN/inf, or all identical.
    """
    value = model_input(model)
    dims = [
        d.dim_value if d.HasField("dim_value") else None for d in value.type.tensor_type.shape.dim
    ]
    samples = np.asarray(samples)
    if not np.issubdtype(samples.dtype, np.number):
        raise BadInputError(f"Calibration data must be numeric, got dtype {samples.dtype}.")
    if samples.ndim != len(dims) or any(
        d is not None and d != s for d, s in zip(dims[1:], samples.shape[1:], strict=False)
    ):
        raise BadInputError(
            f"Calibration samples have shape {list(samples.shape[1:])} but input "
            f"'{value.name}' takes {dims[1:]} (after the batch dimension)."
        )
    batch = dims[0] or 1
    if len(samples) < batch:
        raise BadInputError(
            f"Calibration needs at least {batch} samples (one batch of '{value.name}'); "
            f"got {len(samples)}."
        )
    dtype = onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)
    samples = samples.astype(dtype, copy=False)
    if np.issubdtype(dtype, np.floating) and not np.isfinite(samples).all():
        raise BadInputError("Calibration data contains NaN or infinite values.")
    if len(samples) > 1 and np.ptp(samples.reshape(len(samples), -1), axis=0).max() == 0:
        raise BadInputError(
            "Calibration data has no variation (every sample is identical), so activation "
            "ranges would describe a single input; use representative inputs."
        )
    return samples
