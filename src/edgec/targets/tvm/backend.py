"""Apache TVM 0.27 (Relax) behind the :class:`~edgec.targets.base.Backend` protocol.

``build`` imports the stage's ONNX model, optionally tunes it with MetaSchedule, compiles it
for the descriptor's TVM target (host CPU, aarch64 boards cross-linked, CUDA for Jetsons and
the T4) and writes ``model.tvm.so`` (plus ``tuning/`` when tuned). The artifact's metadata holds
what loading it needs — device, CUDA arch, threads, input names, shapes and dtypes — so a device
loads it with the runtime-only TVM (:mod:`.runner`). ``measure`` times it on this machine
(``measured-host``) or on a device through TVM RPC (``measured-device``, :mod:`.rpc`).

TVM is imported lazily: importing this module does not import ``tvm``; :meth:`available`
reports a missing extra as ``pip install 'edgec[tvm]'``.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from pathlib import Path

import onnx

from edgec.errors import BadInputError, MissingDependencyError
from edgec.targets.base import (
    DEFAULT_MEASURE_POLICY,
    Artifact,
    BackendBase,
    BuildOptions,
    LatencyStats,
    MeasurePolicy,
    time_runner,
)
from edgec.targets.descriptor import Target
from edgec.targets.tvm import ops
from edgec.targets.tvm.targets import tvm_target_for

ARTIFACT_NAME = "model.tvm.so"
_INSTALL_HINT = "pip install 'edgec[tvm]'"
_NP_TYPES = {
    onnx.TensorProto.FLOAT: "float32",
    onnx.TensorProto.FLOAT16: "float16",
    onnx.TensorProto.DOUBLE: "float64",
    onnx.TensorProto.INT64: "int64",
    onnx.TensorProto.INT32: "int32",
    onnx.TensorProto.INT8: "int8",
    onnx.TensorProto.UINT8: "uint8",
    onnx.TensorProto.BOOL: "bool",
}


def _io_specs(model: onnx.ModelProto) -> tuple[list[dict], list[str]]:
    """Graph inputs (not initializers) with static shapes, and output names, in graph order."""
    weights = {init.name for init in model.graph.initializer}
    inputs = []
    for value in model.graph.input:
        if value.name in weights:
            continue
        tensor = value.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else 0 for d in tensor.shape.dim]
        if any(d <= 0 for d in dims):
            raise BadInputError(
                f"Input '{value.name}' has a dynamic shape; TVM builds need static shapes "
                f"(pass --input-shape {value.name}=1x...)."
            )
        dtype = _NP_TYPES.get(tensor.elem_type)
        if dtype is None:
            raise BadInputError(
                f"Input '{value.name}' has ONNX element type {tensor.elem_type}, which the TVM "
                "backend does not feed."
            )
        inputs.append({"name": value.name, "shape": dims, "dtype": dtype})
    return inputs, [value.name for value in model.graph.output]


def _importable(name: str) -> bool:
    """Whether ``import name`` can work, without importing it (TVM's import takes seconds)."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # ValueError: a module blocked in sys.modules
        return False


class TvmBackend(BackendBase):
    """Builds with Apache TVM (optionally tuned), runs with its runtime, here or over RPC.

    It is the backend that measures on a device (TVM RPC) and tunes (MetaSchedule). Untuned,
    TVM 0.27 has no CPU schedules for convolutions: its CPU code runs 10-200x slower than
    ONNX Runtime (``benchmarks/RESULTS.md``), hence ``needs_tuning_on_cpu``.
    """

    name = "tvm"
    measures_on_device = True
    tunes = True
    needs_tuning_on_cpu = True
    op_support_source = ops.SOURCE

    def available(self) -> tuple[bool, str]:
        """TVM is an extra: available when ``apache-tvm`` and ``tvm_ffi`` are installed."""
        if not all(_importable(name) for name in ("tvm", "tvm_ffi")):
            return False, f"Apache TVM is not installed: {_INSTALL_HINT}"
        try:
            version = importlib.metadata.version("apache-tvm")
        except importlib.metadata.PackageNotFoundError:
            version = "from source"
        return True, f"apache-tvm {version}"

    def can_build(self, target: Target) -> tuple[bool, str]:
        """Available, and the target's TVM target and linker (cross compiler, C library) are
        usable here."""
        ok, why = self.available()
        if not ok:
            return ok, why
        try:
            tvm_target_for(target)
        except MissingDependencyError as err:
            return False, str(err).rstrip(".")
        return True, why

    def uses_accelerator(self, target: Target) -> bool:
        """TVM builds CUDA for targets whose ``tvm_target`` is CUDA (the Jetsons, the T4)."""
        return (target.tvm_target or {}).get("kind") == "cuda"

    def supports_op(self, op_type: str, domain: str = "", dtypes: tuple[str, ...] = ()) -> bool:
        """The Relax ONNX importer's converters (:mod:`edgec.targets.tvm.ops`)."""
        return ops.supports(op_type, domain)

    def _require(self) -> None:
        ok, why = self.available()
        if not ok:
            raise MissingDependencyError(f"The tvm backend cannot be used: {why}.")

    def runs_here(self, artifact: Artifact) -> bool:
        """Whether this machine can run the artifact: CPU code for this architecture and CPU.

        Code generated for another CPU model (``mcpu``) of the same architecture may use
        instructions this one lacks, so only this machine's own ``mcpu`` counts.
        """
        from edgec.targets.tvm.targets import this_machine_arch

        meta = artifact.metadata
        if meta.get("device") != "cpu" or meta.get("arch") != this_machine_arch():
            return False
        mcpu = (meta.get("tvm_target") or {}).get("mcpu")
        if mcpu is None:
            return True
        from edgec.targets.tvm._env import import_tvm, local_cores

        import_tvm(local_cores())
        from tvm.target import codegen

        return mcpu == codegen.llvm_get_system_cpu()

    def build(
        self, model_path: Path, target: Target, out_dir: Path, options: BuildOptions
    ) -> Artifact:
        """Compile ``model_path`` for ``target`` into ``out_dir`` (tuning first when asked).

        Raises:
            MissingDependencyError: TVM or the cross compiler the target needs is missing.
            BadInputError: TVM cannot import, tune or compile the model for the target.
        """
        self._require()
        from edgec.targets.tvm._env import import_tvm, local_cores
        from edgec.targets.tvm.build import compile_module, export, import_onnx

        # This process compiles (and may tune and measure) here: TVM's pool gets this
        # machine's cores; ``threads`` (the target's) is recorded for the device's runtime.
        import_tvm(local_cores())
        spec = tvm_target_for(target)
        threads = options.threads or spec.threads
        model = onnx.load(model_path, load_external_data=False)
        inputs, outputs = _io_specs(model)
        mod = import_onnx(model_path)
        out_dir.mkdir(parents=True, exist_ok=True)
        database, tuning = None, None
        files: list[Path] = []
        if options.tune_trials > 0:
            database, tuning = self.tune(mod, target, out_dir, options)
            files += sorted(p for p in (out_dir / tuning.database).rglob("*") if p.is_file())
        executable = compile_module(mod, spec, database)
        artifact_path = out_dir / ARTIFACT_NAME
        export(executable, artifact_path, spec)
        return Artifact(
            backend=self.name,
            path=artifact_path,
            target=target.name,
            files=(artifact_path, *files),
            metadata={
                "apache-tvm": importlib.metadata.version("apache-tvm"),
                "tvm_target": spec.spec,
                "device": spec.device,
                "arch": spec.arch,
                "cuda_arch": spec.cuda_arch,
                "cuda_code": "CUDA C source, compiled at load (NVRTC)"
                if spec.device == "cuda"
                else None,
                "linker": spec.cross_compiler or "this machine's cc",
                "threads": threads,
                "inputs": inputs,
                "outputs": outputs,
                "tuning": tuning.to_json() if tuning else None,
            },
        )

    def tune(self, mod, target: Target, out_dir: Path, options: BuildOptions):
        """Tune a Relax module with MetaSchedule; return ``(database, TuningSummary)``."""
        from edgec.targets.tvm.rpc import parse_device_url
        from edgec.targets.tvm.tuning import tune

        spec = tvm_target_for(target)
        device = parse_device_url(options.device) if options.device else None
        return tune(
            mod,
            spec,
            out_dir,
            options.tune_trials,
            is_this_machine=target.is_host,
            cache=Path(options.tuning_cache) if options.tuning_cache else None,
            device=device,
            seed=options.seed,
            report=options.progress,
        )

    def load(self, artifact: Artifact):
        """Load the artifact on this machine in a Relax VM.

        Raises:
            BadInputError: The artifact is for another architecture or needs a GPU.
        """
        self._require()
        from edgec.targets.tvm.runner import TvmRunner
        from edgec.targets.tvm.targets import this_machine_arch

        meta = artifact.metadata
        if meta.get("device") == "cpu" and meta.get("arch") != this_machine_arch():
            raise BadInputError(
                f"{artifact.path.name} was built for {meta.get('arch')} ({artifact.target}) and "
                f"cannot run on this {this_machine_arch()} machine; measure it with "
                "--device rpc://HOST:PORT on the device."
            )
        return TvmRunner(
            artifact.path,
            [spec["name"] for spec in meta["inputs"]],
            list(meta["outputs"]),
            device=meta.get("device", "cpu"),
            cuda_arch=meta.get("cuda_arch"),
            threads=meta.get("threads"),
        )

    def measure(
        self, artifact: Artifact, where: str = "host", policy: MeasurePolicy | None = None
    ) -> LatencyStats:
        """Time the artifact here (``host``) or on a device (``rpc://…``, ``tracker://…``)."""
        policy = policy or DEFAULT_MEASURE_POLICY
        if where == "host":
            runner = self.load(artifact)
            from edgec.targets.tvm.rpc import random_feeds

            specs = artifact.metadata["inputs"]
            feeds = dict(zip([s["name"] for s in specs], random_feeds(specs), strict=True))
            return time_runner(runner, feeds, policy)
        self._require()
        from edgec.targets.tvm.rpc import measure_remote, parse_device_url

        return measure_remote(
            artifact.path,
            artifact.metadata["inputs"],
            parse_device_url(where),
            device=artifact.metadata.get("device", "cpu"),
            policy=policy,
        )
