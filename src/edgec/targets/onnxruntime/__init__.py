"""The ONNX Runtime backend: offline graph optimisation, CPU sessions, host measurement."""

from __future__ import annotations

from edgec.targets.onnxruntime.backend import OnnxRuntimeBackend

__all__ = ["OnnxRuntimeBackend"]
