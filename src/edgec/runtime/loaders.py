"""Stage loaders for the generated runtime: a small table keyed by the stage's backend.

Self-contained (NumPy; each backend's runtime imported only when a stage needs it): the runtime
generator copies it verbatim into a bundle's ``runtime/``. A stage is loaded from its manifest
entry's ``backend`` and ``artifact``:

* ``onnxruntime``: an ``InferenceSession`` on the artifact (already optimised offline, so the
  session does not optimise again), CPU execution provider, with the stage's thread count
  capped at the cores this process may use.
* ``tvm``: runtime-only TVM (``TVM_USE_RUNTIME_LIB=1``, no compiler library needed on the
  device): ``tvm.runtime.load_module`` and the Relax ``VirtualMachine`` on the artifact
  ``.so``, on the device its build options name (``cpu`` by default). CUDA artifacts carry CUDA
  C source compiled when loaded: the loader loads TVM's CUDA runtime library and registers an
  NVRTC compile callback for the artifact's ``cuda_arch`` (the recipe
  ``edgec.targets.tvm.runner`` follows; it needs a CUDA GPU, so edgec's tests, which run
  without one, exercise only the CPU path).

Any other backend is refused with one sentence naming the stage, its backend and what this
runtime loads.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np


class StageLoadError(RuntimeError):
    """A stage cannot be loaded: unknown backend, missing artifact or backend runtime."""


def usable_cores() -> int:
    """CPU cores this process may use (its affinity, which is what a container really gets)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def _threads(options: dict) -> int:
    override = os.environ.get("EDGEC_THREADS")
    if override and override.isdigit() and int(override) > 0:
        return int(override)
    requested = int(options.get("intra_op_threads") or options.get("threads") or usable_cores())
    return max(1, min(requested, usable_cores()))


_ORT_LEVELS = {
    "disabled": "ORT_DISABLE_ALL",
    "basic": "ORT_ENABLE_BASIC",
    "extended": "ORT_ENABLE_EXTENDED",
    "all": "ORT_ENABLE_ALL",
}


def session_options(level: str, threads: int | None = None, *, spinning: bool = False):
    """The ``onnxruntime.SessionOptions`` every ONNX Runtime session of edgec starts from.

    Quiet (errors only); idle intra-op threads sleep unless ``spinning``: several sessions, a
    prefetch thread and a network client share the cores, and spinning pools starve each other.
    The compiler times and checks models with these same options, so what it measures is what
    a bundle runs.

    Args:
        level: Graph optimisation: ``disabled`` (an artifact already optimised offline),
            ``basic``, ``extended`` or ``all``.
        threads: Intra-op threads, with one inter-op thread; ``None`` leaves ORT's defaults.
        spinning: Let idle intra-op threads spin.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, _ORT_LEVELS[level])
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", str(int(spinning)))
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return options


class OnnxRuntimeStage:
    """A stage run by ONNX Runtime."""

    def __init__(self, path: Path, options: dict):
        try:
            import onnxruntime as ort
        except ImportError:
            raise StageLoadError(
                f"{path} needs ONNX Runtime, which is not installed: pip install onnxruntime."
            ) from None
        try:
            self.session = ort.InferenceSession(
                str(path),
                session_options("disabled", _threads(options)),
                providers=["CPUExecutionProvider"],
            )
        except Exception as err:  # ORT raises several unrelated types
            raise StageLoadError(f"ONNX Runtime cannot load {path}: {err}") from None
        self.input_name = self.session.get_inputs()[0].name

    def run(self, x: np.ndarray) -> np.ndarray:
        """The stage's first output for one input."""
        return self.session.run(None, {self.input_name: x})[0]


class TvmStage:
    """A stage compiled by TVM (Relax), loaded with the TVM runtime alone."""

    def __init__(self, path: Path, options: dict):
        os.environ.setdefault("TVM_USE_RUNTIME_LIB", "1")
        os.environ.setdefault("TVM_NUM_THREADS", str(_threads(options)))
        # Without this TVM pins the calling thread (and so every thread created later) to
        # one core.
        os.environ.setdefault("TVM_BIND_THREADS", "0")
        try:
            import tvm
            import tvm.runtime.vm
        except ImportError:
            raise StageLoadError(
                f"{path} needs the TVM runtime, which is not installed: pip install "
                "apache-tvm (only its runtime library is used)."
            ) from None
        self._tvm = tvm
        kind = str(options.get("device", "cpu"))
        if kind == "cuda":
            _prepare_cuda(tvm, options.get("cuda_arch"))
        self.device = tvm.device(kind, 0)
        try:
            self.library = tvm.runtime.load_module(str(path))
            self.vm = tvm.runtime.vm.VirtualMachine(self.library, self.device)
        except Exception as err:  # TVM raises its own error types
            raise StageLoadError(f"the TVM runtime cannot load {path}: {err}") from None

    def run(self, x: np.ndarray) -> np.ndarray:
        """The stage's first output for one input."""
        out = self.vm["main"](self._tvm.runtime.tensor(x, self.device))
        first = out if hasattr(out, "numpy") else out[0]
        return first.numpy()


def _prepare_cuda(tvm, cuda_arch: str | None) -> None:
    """TVM's CUDA runtime library and an NVRTC compile callback for ``cuda_arch``."""
    import ctypes

    if tvm.get_global_func("device_api.cuda", allow_missing=True) is None:
        library = Path(tvm.__file__).parent / "lib" / "libtvm_runtime_cuda.so"
        try:
            ctypes.CDLL(str(library), ctypes.RTLD_GLOBAL)
        except OSError as err:
            raise StageLoadError(
                f"this stage needs TVM's CUDA runtime ({library.name}), which does not load "
                f"here: {err}."
            ) from None
    import tvm_ffi

    @tvm_ffi.register_global_func("tvm_callback_cuda_compile", override=True)
    def _compile(code, target=None):  # the signature TVM calls
        from tvm.support import nvcc

        return nvcc.compile_cuda(code, target_format="cubin", compiler="nvrtc", arch=cuda_arch)


LOADERS: dict[str, Callable[[Path, dict], object]] = {
    "onnxruntime": OnnxRuntimeStage,
    "tvm": TvmStage,
}


def load_stage(root: Path, stage: dict):
    """Load one stage of the bundle at ``root`` from its entry (``name``, ``backend``,
    ``artifact``, optional ``options``).

    Raises:
        StageLoadError: Unknown backend, missing artifact, or its runtime is not installed.
    """
    name, backend = stage["name"], stage["backend"]
    loader = LOADERS.get(backend)
    if loader is None:
        raise StageLoadError(
            f"Stage '{name}' was built for the '{backend}' backend, which this runtime cannot "
            f"load (it loads {', '.join(sorted(LOADERS))}); recompile with one of those."
        )
    path = Path(root) / stage["artifact"]
    if not path.is_file():
        raise StageLoadError(f"Stage '{name}': its artifact {path} is missing.")
    return loader(path, dict(stage.get("options") or {}))
