"""The Edge TPU backend: a full-integer ``.tflite`` with uint8 I/O, compiled when it can be.

The Edge TPU runs only fully 8-bit quantized TensorFlow Lite models compiled by Google's
``edgetpu_compiler`` (https://coral.ai/docs/edgetpu/models-intro/). This backend builds the
stage with the LiteRT backend (:mod:`edgec.targets.litert`) at INT8 with integer (uint8) I/O,
checks every op against the documented supported-op list (:mod:`edgec.targets.edgetpu.ops`),
and, where ``edgetpu_compiler`` is on ``PATH``, runs it and ships ``model_edgetpu.tflite``
next to the CPU model. Where it is not, the artifact's ``edgetpu`` section says so:
``{"compiled": false, "reason": ..., "ops_supported": k, "ops_total": n}``, and the device
runtime runs the ``.tflite`` on the CPU. FP32 is refused with the reason (the Edge TPU has no
float), so ``--backend auto`` falls back to the next preference and says why.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from edgec.errors import BadInputError
from edgec.targets.base import Artifact, BuildOptions
from edgec.targets.descriptor import Target
from edgec.targets.edgetpu.ops import check_ops, tflite_ops
from edgec.targets.litert.backend import LiteRtBackend

COMPILER = "edgetpu_compiler"
COMPILED_NAME = "model_edgetpu.tflite"


class EdgeTpuBackend(LiteRtBackend):
    """Full-integer TFLite for the Coral Edge TPU (compiled by ``edgetpu_compiler`` if here)."""

    name = "edgetpu"
    io_dtype = "uint8"
    # edgetpu_compiler takes the default (per-tensor) fully-connected format only.
    per_channel_fc = False

    def available(self) -> tuple[bool, str]:
        """Available when ``ai-edge-litert`` is (edgec writes the TFLite ``edgetpu_compiler``
        takes)."""
        ok, why = super().available()
        if ok:
            return ok, why
        return False, (
            "the Edge TPU runs only full-integer TFLite models compiled by edgetpu_compiler, "
            f"and edgec writes those with the litert backend: {why}"
        )

    def uses_accelerator(self, target: Target) -> bool:
        """Whether its artifact runs on the TPU: only when ``edgetpu_compiler`` is here to
        compile it (uncompiled, the board's CPU runs the ``.tflite``, and the cost model
        prices it there)."""
        return shutil.which(COMPILER) is not None

    def build(
        self, model_path: Path, target: Target, out_dir: Path, options: BuildOptions
    ) -> Artifact:
        """Build the full-integer ``.tflite`` (INT8 only) and compile it where possible.

        Raises:
            BadInputError: An FP32 stage (the Edge TPU runs 8-bit models only), or the
                converter lacks an op of the model.
        """
        if options.precision != "int8":
            raise BadInputError(
                "the Edge TPU runs only full-integer (INT8) TFLite models compiled by "
                "edgetpu_compiler; compile with --precision int8 (or auto) and --data"
            )
        return super().build(model_path, target, out_dir, options)

    def after_build(
        self, path: Path, data: bytes, target: Target, out_dir: Path, options: BuildOptions
    ) -> tuple[dict, tuple[Path, ...]]:
        """The op check, and ``edgetpu_compiler``'s model where the compiler is here."""
        check = check_ops(tflite_ops(data))
        section = {"compiled": False, **check.to_json()}
        compiler = shutil.which(COMPILER)
        if compiler is None:
            section["reason"] = (
                f"{COMPILER} is not on PATH (Coral's apt package edgetpu-compiler, x86-64 Linux "
                "only): the .tflite runs on the board's CPU"
            )
            return {"edgetpu": section}, ()
        done = subprocess.run(
            [compiler, "-s", "-o", str(out_dir), str(path)],
            capture_output=True,
            text=True,
            timeout=600,
        )
        compiled = out_dir / COMPILED_NAME
        log = out_dir / "model_edgetpu.log"
        written = tuple(p for p in (compiled, log) if p.is_file())
        if done.returncode != 0 or not compiled.is_file():
            last = (done.stderr or done.stdout).strip().splitlines()
            section["reason"] = f"{COMPILER} failed: {last[-1] if last else done.returncode}"
            return {"edgetpu": section}, written
        section.update(compiled=True, reason=None, compiler_output=done.stdout[-2000:])
        return {"edgetpu": section, "edgetpu_model": COMPILED_NAME}, written
