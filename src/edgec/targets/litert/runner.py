"""A ``.tflite`` model loaded in LiteRT's interpreter, with the Runner interface.

Float arrays fed to an integer input are quantized on the input's grid, and integer outputs are
dequantized, so a runner of an integer-I/O model (Coral) answers in the same units as the ONNX
model it came from. XNNPACK (LiteRT's default CPU delegate) runs it with the stage's threads.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

import numpy as np

from edgec.errors import BadInputError
from edgec.targets.litert.requirement import litert_module


def interpreter_class():
    """``ai_edge_litert.interpreter.Interpreter``.

    Raises:
        MissingDependencyError: ``ai-edge-litert`` is not installed.
    """
    return litert_module("interpreter").Interpreter


def to_input(x: np.ndarray, detail: dict) -> np.ndarray:
    """``x`` as the input tensor takes it (quantized when the input is integer, ``x`` float)."""
    dtype = np.dtype(detail["dtype"])
    if np.issubdtype(dtype, np.integer) and np.issubdtype(x.dtype, np.floating):
        scale, zero_point = detail["quantization"]
        info = np.iinfo(dtype)
        x = np.clip(np.round(x / (scale or 1.0)) + zero_point, info.min, info.max)
    return np.ascontiguousarray(x.astype(dtype, copy=False))


def from_output(y: np.ndarray, detail: dict) -> np.ndarray:
    """An output tensor in real units (dequantized when integer)."""
    scale, zero_point = detail["quantization"]
    if np.issubdtype(y.dtype, np.integer) and scale:
        return ((y.astype(np.float32) - zero_point) * scale).astype(np.float32)
    return y


_QUIETED = False


@contextlib.contextmanager
def _quiet_first_delegate_line():
    """Keep LiteRT's once-per-process ``INFO: Created TensorFlow Lite XNNPACK delegate for
    CPU.`` (written by C++ straight to file descriptor 2, no switch turns it off) out of the
    compiler's output: the first interpreter is created with descriptor 2 on /dev/null. Errors
    still arrive, as the Python exceptions LiteRT raises."""
    global _QUIETED
    if _QUIETED:
        yield
        return
    _QUIETED = True
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as sink:
            os.dup2(sink.fileno(), 2)
            try:
                yield
            finally:
                os.dup2(saved, 2)
    finally:
        os.close(saved)


class LiteRtRunner:
    """A ``.tflite`` file in LiteRT's interpreter (XNNPACK, ``threads`` threads)."""

    def __init__(self, path: Path, threads: int | None = None):
        interpreter = interpreter_class()
        try:
            with _quiet_first_delegate_line():
                self.interpreter = interpreter(model_path=str(path), num_threads=threads or 1)
                self.interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as err:
            raise BadInputError(f"LiteRT cannot load {Path(path).name}: {err}") from None
        self.inputs = self.interpreter.get_input_details()
        self.outputs = self.interpreter.get_output_details()
        self.input_names = [d["name"] for d in self.inputs]
        self.output_names = [d["name"] for d in self.outputs]

    def run(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Run once; outputs in the model's output order, in real units."""
        for detail in self.inputs:
            self.interpreter.set_tensor(detail["index"], to_input(inputs[detail["name"]], detail))
        self.interpreter.invoke()
        return [from_output(self.interpreter.get_tensor(d["index"]), d) for d in self.outputs]

    def random_inputs(self, seed: int = 0) -> dict[str, np.ndarray]:
        """Random inputs of the model's shapes and types (for timing)."""
        rng = np.random.default_rng(seed)
        feeds = {}
        for d in self.inputs:
            dtype = np.dtype(d["dtype"])
            if np.issubdtype(dtype, np.integer):
                info = np.iinfo(dtype)
                feeds[d["name"]] = rng.integers(info.min, info.max, size=d["shape"]).astype(dtype)
            else:
                feeds[d["name"]] = rng.standard_normal(d["shape"]).astype(dtype)
        return feeds
