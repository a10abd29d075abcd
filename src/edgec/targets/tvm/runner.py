"""Run a TVM artifact with the TVM runtime alone: what a device needs, no compiler.

Everything here works with ``TVM_USE_RUNTIME_LIB=1`` (the ~17 MB runtime: the ``tvm`` package
without ``lib/libtvm_compiler.so``, plus ``tvm_ffi``): ``tvm.runtime.load_module`` and
``tvm.runtime.vm.VirtualMachine``. ``tvm.relax`` does not import in that mode and is not used.

CUDA artifacts built by edgec carry CUDA C source, compiled when loaded (edgec builds without a
GPU and for boards whose CUDA is older than the build machine's ``nvcc``). On the GPU machine
the runtime therefore needs TVM's CUDA runtime library and a compile callback: this module loads
``tvm/lib/libtvm_runtime_cuda.so`` globally when the CUDA device API is missing and registers
``tvm_callback_cuda_compile`` to compile with NVRTC for the artifact's ``sm_XX``.
"""

from __future__ import annotations

import ctypes
import importlib
from pathlib import Path

import numpy as np

from edgec.errors import BadInputError
from edgec.targets.tvm._env import import_tvm


class TvmRunner:
    """A Relax VM over one exported artifact, with the :class:`~edgec.targets.base.Runner` API.

    Attributes:
        input_names: Inputs in the order ``main`` takes them.
        output_names: Outputs in the order ``main`` returns them.
    """

    def __init__(
        self,
        path: Path,
        input_names: list[str],
        output_names: list[str],
        device: str = "cpu",
        cuda_arch: str | None = None,
        threads: int | None = None,
    ):
        tvm = import_tvm(threads)
        vm_module = importlib.import_module("tvm.runtime.vm")  # not loaded by ``import tvm``
        self._tvm = tvm
        if device == "cuda":
            _prepare_cuda(tvm, cuda_arch)
            self.device = tvm.cuda(0)
            if not self.device.exist:
                raise BadInputError(
                    f"{path.name} is a CUDA artifact ({cuda_arch}) and this machine has no "
                    "CUDA GPU; run it on the target device."
                )
        else:
            self.device = tvm.cpu(0)
        try:
            library = tvm.runtime.load_module(str(path))
        except Exception as err:  # TVM raises its own error types
            raise BadInputError(
                f"TVM cannot load {path.name}: {_last_line(err)} (was it built for this "
                "machine's architecture?)"
            ) from None
        self._vm = vm_module.VirtualMachine(library, self.device)
        self._main = self._vm["main"]
        self.input_names = list(input_names)
        self.output_names = list(output_names)

    def run(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Run once; outputs in the model's output order."""
        args = [
            self._tvm.runtime.tensor(np.ascontiguousarray(inputs[name]), self.device)
            for name in self.input_names
        ]
        return outputs_to_numpy(self._main(*args))


def outputs_to_numpy(result) -> list[np.ndarray]:
    """A VM result (one tensor or a tuple of them) as a list of arrays."""
    if hasattr(result, "numpy"):
        return [result.numpy()]
    return [item.numpy() for item in result]


def _last_line(err: Exception) -> str:
    lines = [line for line in str(err).strip().splitlines() if line.strip()]
    return lines[-1] if lines else type(err).__name__


def _prepare_cuda(tvm, cuda_arch: str | None) -> None:
    """Make CUDA artifacts loadable: the CUDA runtime library and an NVRTC compile callback."""
    if tvm.get_global_func("device_api.cuda", allow_missing=True) is None:
        library = Path(tvm.__file__).parent / "lib" / "libtvm_runtime_cuda.so"
        if not library.is_file():
            raise BadInputError(
                "This TVM install has no CUDA runtime (lib/libtvm_runtime_cuda.so); "
                "install an apache-tvm wheel built with CUDA."
            )
        try:
            ctypes.CDLL(str(library), ctypes.RTLD_GLOBAL)
        except OSError as err:
            raise BadInputError(
                f"TVM's CUDA runtime does not load here ({err}); is the NVIDIA driver installed?"
            ) from None
    import tvm_ffi

    @tvm_ffi.register_global_func("tvm_callback_cuda_compile", override=True)
    def _compile(code, target=None):  # signature fixed by TVM
        from tvm.support import nvcc

        return nvcc.compile_cuda(code, target_format="cubin", compiler="nvrtc", arch=cuda_arch)
