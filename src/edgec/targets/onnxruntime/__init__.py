"""The ONNX Runtime backend: offline graph optimisation, CPU sessions, host measurement.

Also here: ``timing.interleaved_latency`` (several models timed side by side) and
``int8_explain.explain_int8`` (why INT8 is slow on a target).
"""

from __future__ import annotations

from edgec.targets.onnxruntime.backend import OnnxRuntimeBackend

__all__ = ["OnnxRuntimeBackend"]
