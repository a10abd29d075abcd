"""The LiteRT (TensorFlow Lite) backend: ONNX stages as ``.tflite``, run with ``ai-edge-litert``.

``convert`` writes the flatbuffer (FP32, or full-integer INT8 from edgec's guard-approved Q/DQ
model); ``backend.LiteRtBackend`` builds, loads and times it (XNNPACK on the CPU).
"""

from __future__ import annotations

from edgec.targets.litert.backend import LiteRtBackend

__all__ = ["LiteRtBackend"]
