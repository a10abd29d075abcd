"""Export a trained student back to ONNX and prove the export matches torch.

The student is exported with torch's TorchScript-based exporter (``dynamo=False``: it needs no
extra packages and handles every op the converter emits) at the teacher's exact input shape and
with the teacher's input and output names, so each stage of a bundle has the same interface.
:func:`verify_export` runs the exported model in ONNX Runtime on real samples and compares it
with the torch module.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import torch

from edgec.compiler.students.context import OnnxModule
from edgec.runtime.loaders import session_options

MIN_OPSET = 13
MAX_OPSET = 20


class ExportMismatchError(Exception):
    """The exported ONNX model does not compute what the torch student computes."""


def export_student(
    module: OnnxModule,
    input_name: str,
    input_shape: tuple[int, ...],
    output_name: str,
    opset: int,
) -> onnx.ModelProto:
    """The student as an ONNX model with the teacher's input/output names and input shape.

    ``opset`` is the teacher's, raised to :data:`MIN_OPSET` or lowered to :data:`MAX_OPSET`
    where the exporter needs it.
    """
    module.eval()
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the legacy exporter announces its deprecation
        torch.onnx.export(
            module,
            (torch.zeros(input_shape),),
            buffer,
            input_names=[input_name],
            output_names=[output_name],
            opset_version=min(max(opset, MIN_OPSET), MAX_OPSET),
            do_constant_folding=True,
            dynamo=False,
        )
    return onnx.load_from_string(buffer.getvalue())


def verify_export(
    model: onnx.ModelProto, module: OnnxModule, x: np.ndarray, rtol: float = 1e-4
) -> float:
    """Compare ONNX Runtime on ``model`` with ``module`` on each sample of ``x``.

    Returns:
        The largest absolute difference relative to the largest output magnitude.

    Raises:
        ExportMismatchError: The difference exceeds ``rtol``.
    """
    session = ort.InferenceSession(
        model.SerializeToString(), session_options("all"), providers=["CPUExecutionProvider"]
    )
    name = session.get_inputs()[0].name
    got = np.concatenate([session.run(None, {name: x[i : i + 1]})[0] for i in range(len(x))])
    module.eval()
    with torch.no_grad():
        expected = module(torch.from_numpy(np.ascontiguousarray(x))).numpy()
    scale = max(float(np.abs(expected).max()), 1e-6)
    error = float(np.abs(got - expected).max()) / scale
    if error > rtol:
        raise ExportMismatchError(
            f"the exported student differs from torch by {error:.2e} (relative), more than {rtol:g}"
        )
    return error
