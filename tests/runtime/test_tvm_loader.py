"""The generated runtime's TVM loader, in runtime-only mode, on a real TVM build.

The digits teacher is compiled with TVM (Relax, llvm, untuned) in one process; a second
process, with ``TVM_USE_RUNTIME_LIB=1`` as on a device, loads the ``.so`` through the bundle's
``runtime/loaders.py`` and must match ONNX Runtime's outputs.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from edgec.data import load_dataset

pytestmark = [pytest.mark.slow, pytest.mark.tvm]
TEACHER = Path(__file__).resolve().parents[2] / "examples" / "digits" / "teacher.onnx"

BUILD = """
import sys, onnx, tvm
from tvm import relax
from tvm.relax.frontend.onnx import from_onnx
mod = from_onnx(onnx.load(sys.argv[1]), keep_params_in_input=False)
target = tvm.target.Target({"kind": "llvm", "num-cores": 2})
executable = tvm.compile(mod, target=target, relax_pipeline=relax.get_default_pipeline(target))
executable.export_library(sys.argv[2])
"""

LOAD = """
import json, sys
import numpy as np
sys.path.insert(0, sys.argv[1])
from runtime import loaders
runner = loaders.load_stage(sys.argv[2], {"name": "t", "backend": "tvm", "artifact": "t.so"})
x = np.load(sys.argv[3])
outputs = [runner.run(x[i : i + 1]).tolist() for i in range(len(x))]
print(json.dumps({"outputs": outputs, "relax": "tvm.relax" in sys.modules}))
"""


@pytest.mark.skipif(importlib.util.find_spec("tvm") is None, reason="needs the tvm extra")
def test_tvm_stage_loads_runtime_only_and_matches_onnxruntime(teacher_bundle, tmp_path):
    """A TVM-built stage runs through the generated loader table with the TVM runtime alone."""
    x = load_dataset("digits").x_val[:16]
    np.save(tmp_path / "x.npy", x)
    build = subprocess.run(
        [sys.executable, "-c", BUILD, str(TEACHER), str(tmp_path / "t.so")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stderr[-2000:]
    env = {**os.environ, "TVM_USE_RUNTIME_LIB": "1", "TVM_NUM_THREADS": "1"}
    load = subprocess.run(
        [
            sys.executable,
            "-B",
            "-c",
            LOAD,
            str(teacher_bundle),
            str(tmp_path),
            str(tmp_path / "x.npy"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert load.returncode == 0, load.stderr[-2000:]
    result = json.loads(load.stdout)
    assert result["relax"] is False  # runtime only: the compiler side never loaded
    session = ort.InferenceSession(str(TEACHER), providers=["CPUExecutionProvider"])
    expected = np.concatenate([session.run(None, {"x": x[i : i + 1]})[0] for i in range(len(x))])
    got = np.array(result["outputs"]).reshape(expected.shape)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
