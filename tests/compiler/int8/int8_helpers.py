"""Models for the INT8 tests: the example teacher with a fragile layer built in.

:func:`fragile_teacher` multiplies one output channel of the teacher's first convolution by
``factor`` and divides the matching input channel of the second convolution by it. ReLU is
positively homogeneous, so the FP32 model computes the same function (up to float rounding);
but the first convolution's output now has one channel ``factor`` times larger than the others.
Per-tensor INT8 activations take their scale from that channel and round every other channel
to (almost) zero: the classic activation outlier that breaks INT8.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from edgec.compiler.canonicalize import canonicalize
from edgec.compiler.loading import load_model

TEACHER = Path(__file__).resolve().parents[3] / "examples" / "digits" / "teacher.onnx"


def canonical_teacher() -> onnx.ModelProto:
    """The example teacher after canonicalisation (BatchNorm folded into the convolutions)."""
    return canonicalize(load_model(TEACHER, {}).proto)


def fragile_teacher(factor: float = 1000.0) -> tuple[onnx.ModelProto, str]:
    """The canonical teacher with an outlier channel; also the name of the Conv that has it."""
    model = canonical_teacher()
    inits = {init.name: init for init in model.graph.initializer}
    first, second = [n for n in model.graph.node if n.op_type == "Conv"][:2]

    def rescale(name: str, index: tuple, by: float) -> None:
        values = numpy_helper.to_array(inits[name]).copy()
        values[index] *= by
        inits[name].CopyFrom(numpy_helper.from_array(values.astype(np.float32), name))

    rescale(first.input[1], (0,), factor)  # output channel 0 of conv 1: weights ...
    rescale(first.input[2], (0,), factor)  # ... and bias
    rescale(second.input[1], (slice(None), 0), 1.0 / factor)  # input channel 0 of conv 2
    return model, first.name
