"""LiteRT behind the :class:`~edgec.targets.base.Backend` protocol.

``build`` converts the stage's ONNX model (FP32, or the Q/DQ INT8 model the accuracy guard
approved) to ``model.tflite`` with :func:`edgec.targets.litert.convert.convert`, loads it once
in LiteRT's interpreter (a file LiteRT refuses never ships) and records what it holds: the
converter, the ops, the I/O types, and for INT8 whether every tensor but the I/O is integer
(``fully_integer``). A model the converter cannot map raises :class:`BadInputError` naming
what it lacks: under ``--backend auto`` the compiler drops the candidate and the stage falls
back to the next preference with that reason (``backend_fallback``); with ``--backend litert``
the compile stops with it (exit 2).

``load`` and ``measure`` run the file with ``ai-edge-litert`` (XNNPACK, the target's cores as
threads), as the generated runtime does (:mod:`edgec.runtime.loaders`).
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import numpy as np
import onnx

from edgec.errors import BadInputError
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
from edgec.targets.litert.convert import SUPPORTED_OPS, UnsupportedModelError, convert
from edgec.targets.litert.flatbuffer import io_tensor_names, operator_names, tensor_types
from edgec.targets.litert.runner import LiteRtRunner

ARTIFACT_NAME = "model.tflite"
_INTEGER = frozenset({"INT8", "INT32", "UINT8"})


def integer_report(data: bytes) -> dict:
    """``fully_integer`` (every non-I/O activation tensor integer) and the float ones, if any."""
    io = io_tensor_names(data)
    floats = sorted(n for n, t in tensor_types(data).items() if t not in _INTEGER and n not in io)
    return {"fully_integer": not floats, "float_tensors": len(floats)}


class LiteRtBackend(BackendBase):
    """Builds ``.tflite`` stages with edgec's own converter and runs them with LiteRT."""

    name = "litert"
    op_support_source = (
        "edgec's ONNX->TFLite converter (edgec.targets.litert.convert.SUPPORTED_OPS)"
    )
    #: LiteRT's int8 kernels compute the same integers on every CPU (no u8s8 saturation), so
    #: the ``.tflite`` itself is evaluated on ``--data``, not an ONNX stand-in.
    exact_int8_everywhere = True
    #: INT8 fully-connected weights per output channel (LiteRT 2.x runs them).
    per_channel_fc = True
    #: Integer I/O type of INT8 artifacts (``float32``: float I/O).
    io_dtype = "float32"

    def available(self) -> tuple[bool, str]:
        """Available when ``ai-edge-litert`` is installed."""
        try:
            import ai_edge_litert.interpreter  # noqa: F401
        except ImportError:
            return False, "ai-edge-litert is not installed: pip install 'edgec[litert]'"
        return True, f"ai-edge-litert {importlib.metadata.version('ai-edge-litert')}"

    def runs_here(self, artifact: Artifact) -> bool:
        """A ``.tflite`` runs on any CPU LiteRT runs on."""
        return self.available()[0]

    def supports_op(self, op_type: str, domain: str = "", dtypes: tuple[str, ...] = ()) -> bool:
        """The ONNX ops the converter maps (standard domain)."""
        return domain in ("", "ai.onnx") and op_type in SUPPORTED_OPS

    def _convert(self, model_path: Path, precision: str) -> bytes:
        model = onnx.load(model_path)
        try:
            io_dtype = self.io_dtype if precision == "int8" else "float32"
            return convert(model, io_dtype, per_channel_fc=self.per_channel_fc)
        except UnsupportedModelError as err:
            raise BadInputError(f"the LiteRT converter cannot map {err}") from None

    def build(
        self, model_path: Path, target: Target, out_dir: Path, options: BuildOptions
    ) -> Artifact:
        """Write ``model.tflite`` for ``target`` into ``out_dir``.

        Raises:
            BadInputError: The converter lacks an op of the model, or LiteRT refuses the file.
        """
        data = self._convert(model_path, options.precision)
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / ARTIFACT_NAME
        path.write_bytes(data)
        threads = options.threads or target.cpu.cores
        try:
            runner = LiteRtRunner(path, threads=1)
        except BadInputError:
            path.unlink(missing_ok=True)
            raise
        if options.precision != "int8":
            try:
                diff = _fp32_difference(model_path, runner)
            except BadInputError:
                path.unlink(missing_ok=True)
                raise
        ops = operator_names(data)
        metadata = {
            "converter": "edgec onnx->tflite",
            "litert": importlib.metadata.version("ai-edge-litert"),
            "threads": threads,
            "delegate": "xnnpack",
            "ops": len(ops),
            "input_types": [str(d["dtype"].__name__) for d in runner.inputs],
            "output_types": [str(d["dtype"].__name__) for d in runner.outputs],
        }
        if options.precision == "int8":
            metadata.update(integer_report(data))
        else:
            metadata["max_rel_diff_vs_onnx"] = float(f"{diff:.3g}")
        files: tuple[Path, ...] = (path,)
        extra, extra_files = self.after_build(path, data, target, out_dir, options)
        metadata.update(extra)
        files += extra_files
        return Artifact(self.name, path, target.name, files, metadata)

    def after_build(
        self, path: Path, data: bytes, target: Target, out_dir: Path, options: BuildOptions
    ) -> tuple[dict, tuple[Path, ...]]:
        """Hook for subclasses (the Edge TPU compiles the file further): extra metadata and
        files."""
        return {}, ()

    def load(self, artifact: Artifact) -> LiteRtRunner:
        """The ``.tflite`` in LiteRT's interpreter with the stage's threads."""
        return LiteRtRunner(artifact.path, threads=artifact.metadata.get("threads"))

    def measure(
        self, artifact: Artifact, where: str = "host", policy: MeasurePolicy | None = None
    ) -> LatencyStats:
        """Time the artifact on this machine with random inputs of its shapes."""
        if where != "host":
            raise BadInputError(f"The {self.name} backend measures only on this machine.")
        runner = self.load(artifact)
        feeds = runner.random_inputs()
        return time_runner(_RawRunner(runner), feeds, policy or DEFAULT_MEASURE_POLICY)


#: Largest difference from ONNX Runtime an FP32 ``.tflite`` may show on a random input,
#: relative to the output's largest magnitude (measured: below 1e-5 on the benchmark models).
FP32_CHECK_TOLERANCE = 1e-3


def _fp32_difference(model_path: Path, runner: LiteRtRunner) -> float:
    """The FP32 ``.tflite`` against ONNX Runtime on the stage's model, one random input.

    Raises:
        BadInputError: They disagree beyond :data:`FP32_CHECK_TOLERANCE` (a conversion the
            compiler then drops, with this reason, under ``--backend auto``).
    """
    from edgec.targets.onnxruntime.backend import OrtRunner

    reference = OrtRunner(model_path, threads=1, level="basic")
    feeds = runner.random_inputs()
    want = reference.run(feeds)
    got = runner.run(feeds)
    worst = 0.0
    for g, w in zip(got, want, strict=True):
        if g.shape != w.shape:
            raise BadInputError(
                f"the converted .tflite's output has shape {g.shape}, the model's {w.shape}"
            )
        if np.issubdtype(w.dtype, np.floating):
            scale = max(float(np.abs(w).max()), 1e-6)
            worst = max(worst, float(np.abs(g.astype(np.float64) - w).max()) / scale)
    if worst > FP32_CHECK_TOLERANCE:
        raise BadInputError(
            f"the converted .tflite differs from ONNX Runtime by {worst:.1e} of the output's "
            f"range on a random input (more than {FP32_CHECK_TOLERANCE:g})"
        )
    return worst


class _RawRunner:
    """Feeds inputs already in the model's types (no quantization on the timed path)."""

    def __init__(self, runner: LiteRtRunner):
        self.runner = runner
        self.input_names, self.output_names = runner.input_names, runner.output_names

    def run(self, inputs):
        interp = self.runner.interpreter
        for detail in self.runner.inputs:
            interp.set_tensor(detail["index"], inputs[detail["name"]])
        interp.invoke()
        return [interp.get_tensor(d["index"]) for d in self.runner.outputs]
