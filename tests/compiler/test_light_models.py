"""Every real architecture in the onnx wheel compiles for the host and keeps its outputs.

The light models' weights are replaced by random values of the same shape first (their shipped
weights are constant 0.02, which makes any output comparison meaningless). Tolerance: the
bundle's stage model and the original agree on ONNX Runtime within rtol 1e-4, atol 1e-5.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from models import LIGHT_MODELS, randomized_light_model

from edgec.compiler import compile_model
from edgec.config import CompileConfig


def _session(path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


@pytest.mark.slow
@pytest.mark.parametrize("name", LIGHT_MODELS)
def test_light_model_compiles_for_host_and_keeps_its_outputs(name, tmp_path):
    original = tmp_path / f"{name}.onnx"
    onnx.save(randomized_light_model(name), original)
    out = tmp_path / "bundle"
    compile_model(CompileConfig(model=original, target="host", output=out, measure_seconds=0.3))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stages"][0]["latency_ms"]["source"] == "measured-host"

    reference, compiled = _session(original), _session(out / "stages/teacher/model.onnx")
    spec = reference.get_inputs()[0]
    x = np.random.default_rng(1).standard_normal(spec.shape).astype(np.float32)
    expected = reference.run(None, {spec.name: x})
    actual = compiled.run(None, {compiled.get_inputs()[0].name: x})
    assert len(actual) == len(expected)
    for got, want in zip(actual, expected, strict=True):
        assert np.abs(want).max() > 1e-6  # the random weights make outputs non-degenerate
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
