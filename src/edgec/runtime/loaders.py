"""Stage loaders for the generated runtime: a small table keyed by the stage's backend.

Self-contained (NumPy; each backend's runtime imported only when a stage needs it): the runtime
generator copies it verbatim into a bundle's ``runtime/``. A stage is loaded from its manifest
entry's ``backend`` and ``artifact``:

* ``onnxruntime``: an ``InferenceSession`` on the artifact (already optimised offline, so the
  session does not optimise again unless the entry's ``session_optimization_level`` says so),
  with the stage's thread count capped at the cores this process may use. Without
  ``execution_providers`` in its options the stage runs on the CPU execution provider. With
  them (stages for GPU targets: TensorRT, CUDA, then CPU) it uses the first of them that
  ``onnxruntime.get_available_providers()`` offers, and the next when a provider fails to create
  the session; the provider the session really runs on is the stage's ``runs_on``, logged in
  one line. TensorRT's engine cache path is a template (``engines/{gpu}/{trt_version}/
  {stage_sha256}``) filled in here, under ``$EDGEC_ENGINE_CACHE`` (default
  ``~/.cache/edgec``): the GPU's name, the TensorRT library's version and the artifact's
  SHA-256, because an engine is valid only for all three. When the GPU or the TensorRT version
  cannot be found the cache is turned off. A calibration table the options name is copied from
  the stage's folder into that directory, where the TensorRT provider reads it.
* ``tvm``: runtime-only TVM (``TVM_USE_RUNTIME_LIB=1``, no compiler library needed on the
  device): ``tvm.runtime.load_module`` and the Relax ``VirtualMachine`` on the artifact
  ``.so``, on the device its build options name (``cpu`` by default). CUDA artifacts carry CUDA
  C source compiled when loaded: the loader loads TVM's CUDA runtime library and registers an
  NVRTC compile callback for the artifact's ``cuda_arch`` (the recipe
  ``edgec.targets.tvm.runner`` follows; it needs a CUDA GPU, so edgec's tests, which run
  without one, exercise only the CPU path).

* ``litert`` and ``edgetpu``: a ``.tflite`` in LiteRT's interpreter, from ``ai_edge_litert``
  or, on a device that has the older package, ``tflite_runtime`` (same interpreter API), with
  the stage's threads (XNNPACK). Float inputs to an integer-I/O model (Coral) are quantized on
  the input's grid and integer outputs dequantized. An ``edgetpu`` stage whose options name an
  ``edgetpu_model`` (``model_edgetpu.tflite``, written when ``edgetpu_compiler`` ran) loads that
  file with the Edge TPU delegate (``libedgetpu.so.1``) when the library is present, else the
  plain ``.tflite`` on the CPU; ``runs_on`` says which.

Any other backend is refused with one sentence naming the stage, its backend and what this
runtime loads.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import re
import shutil
import subprocess
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


TENSORRT = "TensorrtExecutionProvider"
CPU_PROVIDER = "CPUExecutionProvider"
ENGINE_CACHE_ENV = "EDGEC_ENGINE_CACHE"
GPU_ENV = "EDGEC_GPU"
TENSORRT_VERSION_ENV = "EDGEC_TENSORRT_VERSION"
UNKNOWN = "unknown"


def select_providers(plan: list | None, available: list[str]) -> list[tuple[str, dict]]:
    """The providers of ``plan`` that ``available`` offers, in the plan's order.

    Args:
        plan: The stage's ``execution_providers`` (``[{"name", "options"}]``); ``None`` or
            empty: the CPU provider alone.
        available: ``onnxruntime.get_available_providers()``.

    Returns:
        ``[(name, options)]`` to try in order; never empty: the CPU provider ends it.
    """
    chosen = [
        (str(entry["name"]), dict(entry.get("options") or {}))
        for entry in plan or ()
        if entry["name"] in available
    ]
    if not any(name == CPU_PROVIDER for name, _ in chosen):
        chosen.append((CPU_PROVIDER, {}))
    return chosen


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9._-]+", "-", text.strip().lower()).strip("-.") or UNKNOWN


def gpu_name() -> str | None:
    """The first GPU's name: ``$EDGEC_GPU``, ``nvidia-smi``, or a Jetson's board model."""
    if os.environ.get(GPU_ENV):
        return os.environ[GPU_ENV]
    try:
        found = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader", "-i", "0"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        if found.returncode == 0 and found.stdout.strip():
            return found.stdout.strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError):
        pass
    try:  # Jetsons have no nvidia-smi; the board model names the (integrated) GPU
        model = Path("/proc/device-tree/model").read_bytes().rstrip(b"\0").decode()
    except OSError:
        return None
    return model if "jetson" in model.lower() else None


def tensorrt_version() -> str | None:
    """The TensorRT library's version: ``$EDGEC_TENSORRT_VERSION``, or ``libnvinfer``'s own."""
    if os.environ.get(TENSORRT_VERSION_ENV):
        return os.environ[TENSORRT_VERSION_ENV]
    for library in ("libnvinfer.so.10", "libnvinfer.so.8", "libnvinfer.so"):
        try:
            return tensorrt_version_text(int(ctypes.CDLL(library).getInferLibVersion()))
        except (OSError, AttributeError):
            continue
    return None


def tensorrt_version_text(number: int) -> str:
    """``"8.2.1"`` from ``NV_TENSORRT_VERSION`` (``getInferLibVersion()``): 8201 up to
    TensorRT 9 (major*1000 + minor*100 + patch), 100300 from TensorRT 10 (major*10000 + ...)."""
    if number >= 10000:
        return f"{number // 10000}.{number // 100 % 100}.{number % 100}"
    return f"{number // 1000}.{number // 100 % 10}.{number % 100}"


def engine_cache_root() -> Path:
    """Where TensorRT engines are cached: ``$EDGEC_ENGINE_CACHE``, else ``~/.cache/edgec``."""
    if os.environ.get(ENGINE_CACHE_ENV):
        return Path(os.environ[ENGINE_CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "edgec"


def tensorrt_options(
    options: dict,
    artifact: Path,
    cache_root: Path,
    gpu: str | None,
    trt_version: str | None,
) -> dict:
    """The TensorRT provider's options with the engine cache path filled in.

    ``trt_engine_cache_path`` is a template over ``{gpu}``, ``{trt_version}`` and
    ``{stage_sha256}`` (the artifact's SHA-256), resolved under ``cache_root`` and created.
    An unknown GPU or TensorRT version turns the engine cache off (an engine is valid only
    for the GPU and TensorRT that built it). A calibration table named by
    ``trt_int8_calibration_table_name`` is copied there from the artifact's folder, where
    the provider looks for it.
    """
    resolved = dict(options)
    template = str(resolved.get("trt_engine_cache_path") or "")
    if not template:
        return resolved
    digest = hashlib.sha256(artifact.read_bytes()).hexdigest()
    path = cache_root / template.format(
        gpu=_slug(gpu or UNKNOWN),
        trt_version=_slug(trt_version or UNKNOWN),
        stage_sha256=digest,
    )
    path.mkdir(parents=True, exist_ok=True)
    resolved["trt_engine_cache_path"] = str(path)
    if gpu is None or trt_version is None:
        resolved["trt_engine_cache_enable"] = False
    table = resolved.get("trt_int8_calibration_table_name")
    if table:
        if Path(str(table)).name != table:
            raise ValueError(f"calibration table name {table!r} is not a plain file name")
        shutil.copyfile(artifact.parent / str(table), path / str(table))
    return resolved


def _first_line(err: Exception) -> str:
    lines = [line for line in str(err).strip().splitlines() if line.strip()]
    return lines[-1] if lines else type(err).__name__


def open_session(candidates: list[tuple[str, dict]], create: Callable, path: Path):
    """A session on the first provider of ``candidates`` that ``create`` can open.

    ``create`` gets the providers from the one being tried to the end (ONNX Runtime assigns
    the nodes a provider cannot run to the next ones); when it raises, the next provider is
    tried.

    Returns:
        The session, and ``"provider: why"`` for each provider that failed before it.

    Raises:
        StageLoadError: No provider could open the session.
    """
    tried: list[str] = []
    for index, (name, _) in enumerate(candidates):
        try:
            return create(candidates[index:]), tried
        except Exception as err:  # ORT raises several unrelated types
            tried.append(f"{name}: {_first_line(err)}")
    raise StageLoadError(f"ONNX Runtime cannot load {path}: {'; '.join(tried)}")


class OnnxRuntimeStage:
    """A stage run by ONNX Runtime, on the first execution provider that works.

    Attributes:
        runs_on: The execution provider the session runs on.
        tried: ``"provider: why it failed"`` for each provider that could not create it.
    """

    def __init__(self, path: Path, options: dict):
        try:
            import onnxruntime as ort
        except ImportError:
            raise StageLoadError(
                f"{path} needs ONNX Runtime, which is not installed: pip install onnxruntime."
            ) from None
        level = str(options.get("session_optimization_level") or "disabled")
        candidates = select_providers(
            options.get("execution_providers"), ort.get_available_providers()
        )
        threads = _threads(options)

        def create(providers: list[tuple[str, dict]]):
            return ort.InferenceSession(
                str(path),
                session_options(level, threads),
                providers=[(name, self._prepared(name, opts, path)) for name, opts in providers],
            )

        self.session, self.tried = open_session(candidates, create, path)
        self.runs_on = self.session.get_providers()[0]
        self.input_name = self.session.get_inputs()[0].name

    @staticmethod
    def _prepared(name: str, options: dict, path: Path) -> dict:
        if name == TENSORRT:
            return tensorrt_options(
                options, path, engine_cache_root(), gpu_name(), tensorrt_version()
            )
        return options

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
        self.runs_on = f"tvm-{kind}"
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


def _tflite_interpreter():
    """The ``Interpreter`` class and ``load_delegate`` of whichever LiteRT package is here."""
    try:
        from ai_edge_litert import interpreter
    except ImportError:
        try:
            from tflite_runtime import interpreter
        except ImportError:
            return None
    return interpreter


class LiteRtStage:
    """A ``.tflite`` stage run by LiteRT (``ai_edge_litert`` or ``tflite_runtime``).

    Attributes:
        runs_on: ``litert-cpu`` or ``edgetpu``.
    """

    def __init__(self, path: Path, options: dict):
        module = _tflite_interpreter()
        if module is None:
            raise StageLoadError(
                f"{path} needs LiteRT, which is not installed: pip install ai-edge-litert "
                "(or tflite-runtime)."
            )
        delegates, model = [], path
        tpu_model = options.get("edgetpu_model")
        if tpu_model and (path.parent / str(tpu_model)).is_file():
            try:
                delegates = [module.load_delegate("libedgetpu.so.1")]
                model = path.parent / str(tpu_model)
            except (ValueError, OSError, AttributeError):
                delegates = []  # no Edge TPU library here: the CPU model
        self.runs_on = "edgetpu" if delegates else "litert-cpu"
        try:
            self.interpreter = module.Interpreter(
                model_path=str(model),
                num_threads=_threads(options),
                experimental_delegates=delegates or None,
            )
            self.interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as err:
            raise StageLoadError(f"LiteRT cannot load {model}: {err}") from None
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]

    def run(self, x: np.ndarray) -> np.ndarray:
        """The stage's first output for one input, in real units."""
        dtype = np.dtype(self.input["dtype"])
        if np.issubdtype(dtype, np.integer) and np.issubdtype(x.dtype, np.floating):
            scale, zero_point = self.input["quantization"]
            info = np.iinfo(dtype)
            x = np.clip(np.round(x / (scale or 1.0)) + zero_point, info.min, info.max)
        self.interpreter.set_tensor(self.input["index"], np.ascontiguousarray(x, dtype=dtype))
        self.interpreter.invoke()
        y = self.interpreter.get_tensor(self.output["index"])
        scale, zero_point = self.output["quantization"]
        if np.issubdtype(y.dtype, np.integer) and scale:
            return ((y.astype(np.float32) - zero_point) * scale).astype(np.float32)
        return y


LOADERS: dict[str, Callable[[Path, dict], object]] = {
    "edgetpu": LiteRtStage,
    "litert": LiteRtStage,
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
