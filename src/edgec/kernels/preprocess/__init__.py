"""The fused pre-processing kernel: camera frame -> model tensor, as ONNX ops, with a reference.

Public API: :class:`PreprocessSpec`, :func:`parse_preprocess`, :class:`PreprocessPlan`,
:func:`plan_preprocess`, :func:`build_preprocess` (the ONNX ops),
:func:`preprocess_reference` (NumPy).
"""

from __future__ import annotations

from edgec.kernels.preprocess.graph import build_preprocess
from edgec.kernels.preprocess.reference import preprocess_reference, resize_reference
from edgec.kernels.preprocess.spec import (
    PreprocessPlan,
    PreprocessSpec,
    parse_preprocess,
    plan_preprocess,
)

__all__ = [
    "PreprocessPlan",
    "PreprocessSpec",
    "build_preprocess",
    "parse_preprocess",
    "plan_preprocess",
    "preprocess_reference",
    "resize_reference",
]
