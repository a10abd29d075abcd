"""``--preprocess`` in a real compile: the bundle takes camera frames, end to end.

The example teacher takes ``[1, 1, 8, 8]`` digits scaled to ``pixel / 16``. Its frames here are
uint8 NHWC greyscale images holding ``pixel * 15`` (0..240), described as
``uint8,nhwc,gray,scale=1/240`` — so the fused kernel recreates the teacher's exact input and
the bundle's accuracy on frames must equal the accuracy on the tensors.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from edgec.compiler import compile_model
from edgec.config import CompileConfig
from edgec.data import digits_arrays
from edgec.errors import BadInputError
from edgec.kernels.preprocess import parse_preprocess

SPEC = "uint8,nhwc,gray,scale=0.004166666666666667"


@pytest.fixture(scope="module")
def digit_frames(tmp_path_factory):
    """Digits as uint8 NHWC frames in an .npz (x, y)."""
    x, y = digits_arrays()
    frames = np.round(x * 16 * 15).astype(np.uint8).transpose(0, 2, 3, 1)
    path = tmp_path_factory.mktemp("frames") / "digit_frames.npz"
    np.savez(path, x=frames, y=y)
    return path


def _compile(teacher_path, out, data, preprocess=None):
    config = CompileConfig(
        model=teacher_path,
        target="host",
        output=out,
        data=data,
        students="none",
        precision="fp32",  # exact comparison with the FP32 teacher (INT8 is its own step)
        measure_seconds=0.2,
        preprocess=parse_preprocess(preprocess) if preprocess else None,
    )
    return compile_model(config)


def test_frame_bundle_matches_tensor_bundle(tmp_path, teacher_path, digit_frames):
    """Same accuracy from frames as from tensors; the manifest input describes the frame."""
    tensors = _compile(teacher_path, tmp_path / "tensors", "digits")
    frames = _compile(teacher_path, tmp_path / "frames", str(digit_frames), SPEC)
    assert frames.manifest["stages"][-1]["accuracy"] == tensors.manifest["stages"][-1]["accuracy"]
    assert frames.manifest["stages"][-1]["accuracy"] > 0.95

    manifest = json.loads((tmp_path / "frames" / "manifest.json").read_text())
    (frame,) = manifest["inputs"]
    assert frame["shape"] == [1, 8, 8, 1] and frame["dtype"] == "uint8"
    assert frame["layout"] == "NHWC"
    assert frame["preprocess"]["tensor"] == {
        "shape": [1, 1, 8, 8],
        "dtype": "float32",
        "layout": "NCHW",
    }

    stage = onnx.load(tmp_path / "frames" / "stages" / "teacher" / "model.onnx")
    assert stage.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    session = ort.InferenceSession(stage.SerializeToString(), providers=["CPUExecutionProvider"])
    teacher = ort.InferenceSession(str(teacher_path), providers=["CPUExecutionProvider"])
    x, _ = digits_arrays()
    frame_batch = np.round(x[:1] * 240).astype(np.uint8).transpose(0, 2, 3, 1)
    np.testing.assert_allclose(
        session.run(None, {frame["name"]: frame_batch})[0],
        teacher.run(None, {teacher.get_inputs()[0].name: x[:1]})[0],
        rtol=1e-4,
        atol=1e-5,
    )


def test_tensor_data_with_preprocess_is_refused_and_nothing_is_written(tmp_path, teacher_path):
    """--data digits gives tensors, not frames: one sentence, no bundle."""
    out = tmp_path / "bundle"
    with pytest.raises(BadInputError, match="must be camera frames"):
        _compile(teacher_path, out, "digits", "uint8,nhwc,gray,size=16x16")
    assert not out.exists()


def test_colour_spec_for_a_greyscale_model_is_refused(tmp_path, teacher_path):
    """An RGB frame cannot feed a one-channel model."""
    with pytest.raises(BadInputError, match="1"):
        _compile(teacher_path, tmp_path / "b", None, "uint8,nhwc,rgb")
    assert not (tmp_path / "b").exists()
