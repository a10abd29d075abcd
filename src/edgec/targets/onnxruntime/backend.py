"""ONNX Runtime behind the :class:`~edgec.targets.base.Backend` protocol.

``build`` writes the offline-optimised model (``model.ort.onnx``). Offline optimisation must
match the hardware that runs it (ORT's docs), so layout-specific optimisations (level ``all``,
which emits x86 NCHWc kernels) are only used when the target is this machine; other targets get
the portable ``extended`` level. Sessions use as many intra-op threads as the target has cores.
On a target whose accelerator is a GPU the artifact is optimised at the ``basic`` level only and
its manifest entry lists the execution providers the runtime tries (TensorRT, CUDA, CPU; see
:mod:`edgec.targets.onnxruntime.providers`).

ORT names the nodes its optimisers create from a counter whose order varies from run to run
(``ReorderOutput``, ``ReorderOutput_token_141``), so ``build`` renames every node whose name is
not in the source model after its position: the same model and options give a byte-identical
artifact (reproducible bundles).
"""

from __future__ import annotations

import importlib.metadata
import re
from pathlib import Path

import numpy as np

from edgec.errors import BadInputError
from edgec.runtime.loaders import session_options
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
from edgec.targets.onnxruntime import providers

ARTIFACT_NAME = "model.ort.onnx"


class OrtRunner:
    """An ``InferenceSession`` with the :class:`~edgec.targets.base.Runner` interface.

    Its thread pool does not spin (``spinning=False``), as in the generated runtime
    (:mod:`edgec.runtime.loaders`), so what edgec times is what a bundle runs: a spinning
    pool wakes faster between kernels (at batch 1, FP32 MobileNets measured ~30% faster here)
    but starves the other stages and threads a bundle's runtime shares the cores with.
    """

    def __init__(
        self,
        model_path: Path,
        threads: int | None = None,
        level: str = "all",
        spinning: bool = False,
        exact_int8: bool = False,
    ):
        import onnxruntime as ort

        options = session_options(level, threads, spinning=spinning)
        if exact_int8:
            # x86 CPUs without VNNI saturate u8s8 products to int16; ORT's U8U8 path does not.
            options.add_session_config_entry("session.x64quantprecision", "1")
        try:
            self.session = ort.InferenceSession(
                str(model_path), options, providers=["CPUExecutionProvider"]
            )
        except Exception as err:  # ORT raises several unrelated exception types
            raise BadInputError(
                f"ONNX Runtime cannot load {model_path.name}: {_first_line(err)}"
            ) from None
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Run once; outputs in the model's output order."""
        return self.session.run(None, inputs)


def _first_line(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return text[-1] if text else type(err).__name__


def random_inputs(runner: OrtRunner, seed: int = 0) -> dict[str, np.ndarray]:
    """Random inputs matching the session's (static) input shapes and types."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for spec in runner.session.get_inputs():
        shape = [d if isinstance(d, int) else 1 for d in spec.shape]
        dtype = _ORT_TYPES.get(spec.type, np.float32)
        if np.issubdtype(dtype, np.integer):
            feeds[spec.name] = rng.integers(0, 8, size=shape).astype(dtype)
        elif dtype is np.bool_:
            feeds[spec.name] = rng.integers(0, 2, size=shape).astype(bool)
        else:
            feeds[spec.name] = rng.standard_normal(shape).astype(dtype)
    return feeds


_ORT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}


def _stabilise_node_names(path: Path, source: Path) -> None:
    """Rename the nodes ORT created (names not in ``source``) after their graph position."""
    import onnx

    known = _node_names(onnx.load(source, load_external_data=False).graph)
    model = onnx.load(path)
    if _rename_created(model.graph, known, prefix=""):
        onnx.save_model(model, path)


def _subgraphs(node) -> list:
    return [g for attr in node.attribute for g in ([attr.g] if attr.HasField("g") else attr.graphs)]


def _node_names(graph) -> set[str]:
    names = {node.name for node in graph.node}
    for node in graph.node:
        for sub in _subgraphs(node):
            names |= _node_names(sub)
    return names


def _rename_created(graph, known: set[str], prefix: str) -> bool:
    changed = False
    for index, node in enumerate(graph.node):
        if node.name not in known or not node.name:
            stem = re.sub(r"_token_\d+$", "", node.name) or node.op_type
            node.name = f"{stem}_ort{prefix}{index}"
            changed = True
        for number, sub in enumerate(_subgraphs(node)):
            changed |= _rename_created(sub, known, f"{prefix}{index}.{number}.")
    return changed


_ORT_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml", "com.microsoft"})


class OnnxRuntimeBackend(BackendBase):
    """Builds, loads and measures ONNX models with ONNX Runtime's CPU execution provider."""

    name = "onnxruntime"
    op_support_source = "every standard ONNX op (ai.onnx, ai.onnx.ml) and com.microsoft contrib ops"

    def runs_here(self, artifact: Artifact) -> bool:
        """An optimised ONNX model runs on any CPU ONNX Runtime runs on."""
        return True

    def supports_op(self, op_type: str, domain: str = "", dtypes: tuple[str, ...] = ()) -> bool:
        """ONNX Runtime implements every op of the standard and contrib domains on its CPU."""
        return domain in _ORT_DOMAINS

    def available(self) -> tuple[bool, str]:
        """ONNX Runtime is a core dependency, so it is available unless the install is broken."""
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            return False, "onnxruntime is not installed: pip install onnxruntime"
        return True, f"onnxruntime {importlib.metadata.version('onnxruntime')}"

    def build(
        self, model_path: Path, target: Target, out_dir: Path, options: BuildOptions
    ) -> Artifact:
        """Write the offline-optimised model for ``target`` into ``out_dir``."""
        import onnxruntime as ort

        gpu = providers.is_gpu_target(target)
        level = providers.ARTIFACT_LEVEL if gpu else "all" if target.is_host else "extended"
        threads = options.threads or target.cpu.cores
        out_dir.mkdir(parents=True, exist_ok=True)
        artifact_path = out_dir / ARTIFACT_NAME
        build_options = session_options(level)
        build_options.optimized_model_filepath = str(artifact_path)
        try:
            ort.InferenceSession(str(model_path), build_options, providers=["CPUExecutionProvider"])
        except Exception as err:
            raise BadInputError(
                f"ONNX Runtime cannot build the model: {_first_line(err)}"
            ) from None
        _stabilise_node_names(artifact_path, model_path)
        metadata = {
            "optimization_level": level,
            "intra_op_threads": threads,
            "onnxruntime": importlib.metadata.version("onnxruntime"),
        }
        files: tuple[Path, ...] = (artifact_path,)
        if gpu:
            plan, written = providers.provider_plan(
                target, options.precision, artifact_path, out_dir
            )
            metadata["session_optimization_level"] = providers.SESSION_LEVEL
            metadata["execution_providers"] = plan
            files += written
        return Artifact(
            backend=self.name,
            path=artifact_path,
            target=target.name,
            files=files,
            metadata=metadata,
        )

    def load(self, artifact: Artifact) -> OrtRunner:
        """Open a session on the optimised model at the level the runtime opens it with
        (``disabled``: already optimised, no second pass; GPU targets' artifacts are optimised
        further when opened)."""
        return OrtRunner(
            artifact.path,
            threads=artifact.metadata.get("intra_op_threads"),
            level=artifact.metadata.get("session_optimization_level", "disabled"),
        )

    def measure(
        self,
        artifact: Artifact,
        where: str = "host",
        policy: MeasurePolicy | None = None,
    ) -> LatencyStats:
        """Time the artifact on this machine with random inputs of the model's shapes."""
        if where != "host":
            raise BadInputError(
                f"The onnxruntime backend measures only on this machine, not '{where}'."
            )
        from onnxruntime.capi.onnxruntime_pybind11_state import Fail, InvalidArgument

        runner = self.load(artifact)
        inputs = random_inputs(runner)
        try:  # a valid model may refuse random values (indices out of range, bad shapes)
            runner.run(inputs)
        except (Fail, InvalidArgument) as err:
            raise BadInputError(
                f"ONNX Runtime cannot run the model on the random inputs edgec times it with: "
                f"{_first_line(err)} (integer inputs such as indices or shapes need values "
                "edgec cannot guess)."
            ) from None
        return time_runner(runner, inputs, policy or DEFAULT_MEASURE_POLICY)
