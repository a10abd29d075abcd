"""The TensorRT backend: declared so targets can prefer it, but it cannot build here.

TensorRT needs an NVIDIA GPU and NVIDIA's libraries at build time; neither exists on the
machines edgec is developed and tested on, so this backend reports itself unavailable and
edgec falls back to the target's next preferred backend (and says so: the manifest's
``backend_fallback``). Nothing here pretends to build.
"""

from __future__ import annotations

from edgec.errors import MissingDependencyError
from edgec.targets.base import BackendBase
from edgec.targets.descriptor import Target
from edgec.targets.tensorrt import ops


class TensorRTBackend(BackendBase):
    """Reports why TensorRT cannot be used on this machine."""

    name = "tensorrt"
    op_support_source = ops.SOURCE
    symmetric_int8_activations = True  # TensorRT's INT8 takes zero point 0 only

    def available(self) -> tuple[bool, str]:
        """TensorRT is importable only with NVIDIA's wheel and a GPU driver."""
        try:
            import tensorrt  # noqa: F401
        except ImportError:
            return False, "TensorRT is not installed (needs an NVIDIA GPU and NVIDIA's wheel)"
        return False, "TensorRT engine building is not implemented in edgec yet"

    def uses_accelerator(self, target: Target) -> bool:
        """A TensorRT engine runs on the GPU."""
        return True

    def supports_op(self, op_type: str, domain: str = "", dtypes: tuple[str, ...] = ()) -> bool:
        """onnx-tensorrt's support matrix (no uint8 tensors)."""
        return ops.supports(op_type, domain, dtypes)

    def _unavailable(self, *_args, **_kwargs):
        raise MissingDependencyError(
            f"The tensorrt backend cannot run here: {self.available()[1]}."
        )

    build = load = measure = _unavailable
