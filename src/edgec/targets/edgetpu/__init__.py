"""The Edge TPU backend: declared so the Coral board's first preference is honest, never built.

The Edge TPU runs only fully-INT8 TensorFlow Lite flatbuffers compiled by Google's
``edgetpu_compiler``; edgec produces ONNX Runtime and TVM artifacts, which run on the board's
CPU. This backend reports itself unavailable with that reason, so a Coral compile falls back
to the next preference and says the Edge TPU is not used (the manifest's
``backend_fallback``).
"""

from __future__ import annotations

from edgec.errors import MissingDependencyError
from edgec.targets.base import BackendBase
from edgec.targets.descriptor import Target

_WHY = (
    "the Edge TPU runs only TensorFlow Lite models compiled by Google's edgetpu_compiler, "
    "which edgec does not produce"
)


class EdgeTpuBackend(BackendBase):
    """Reports why edgec cannot build for the Edge TPU."""

    name = "edgetpu"

    def available(self) -> tuple[bool, str]:
        """Never: edgec has no TFLite path."""
        return False, _WHY

    def uses_accelerator(self, target: Target) -> bool:
        """An Edge TPU model runs on the TPU."""
        return True

    def _unavailable(self, *_args, **_kwargs):
        raise MissingDependencyError(f"The edgetpu backend cannot be used: {_WHY}.")

    build = load = measure = _unavailable
