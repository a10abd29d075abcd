"""The modules every generated runtime ships: scoring, wire format, input reading, loaders.

They are tested here as edgec imports them; the renderer copies them verbatim (checked by the
golden tests), so this is the code that runs on the device and the gateway.
"""

from __future__ import annotations

import http.client

import numpy as np
import pytest
from PIL import Image

from edgec.runtime import codec, inputs, loaders, scoring


def test_softmax_and_probability_detection():
    """Logits get a softmax; rows that already are probabilities are kept as they are."""
    logits = np.array([[2.0, 0.0, -1.0]])
    probs = scoring.to_probabilities(logits, "logits")
    assert probs.sum() == pytest.approx(1.0) and probs.argmax() == 0
    already = np.array([[0.2, 0.8]])
    assert np.allclose(scoring.to_probabilities(already, "auto"), already)
    assert not scoring.looks_like_probabilities(logits)


@pytest.mark.parametrize(
    ("measure", "row", "expected"),
    [
        ("max-prob", [0.7, 0.2, 0.1], 0.7),
        ("margin", [0.7, 0.2, 0.1], 0.5),
        ("entropy", [1.0, 0.0, 0.0], 1.0),
        ("entropy", [1 / 3, 1 / 3, 1 / 3], 0.0),
    ],
)
def test_confidence_measures(measure, row, expected):
    """Each measure on a known row; all lie in [0, 1], higher is surer."""
    assert scoring.confidence(np.array([row]), measure)[0] == pytest.approx(expected, abs=1e-6)


def test_fusion_and_its_errors():
    """replace keeps the remote answer, weighted mixes; bad options are errors."""
    local, remote = np.array([[0.9, 0.1]]), np.array([[0.4, 0.6]])
    assert np.allclose(scoring.fuse(local, remote, "replace", None), remote)
    assert np.allclose(scoring.fuse(local, remote, "weighted", 0.5), [[0.65, 0.35]])
    with pytest.raises(ValueError, match="weight"):
        scoring.fuse(local, remote, "weighted", None)
    with pytest.raises(ValueError, match="unknown fusion"):
        scoring.fuse(local, remote, "vote", None)
    with pytest.raises(ValueError, match="unknown confidence"):
        scoring.confidence(local, "vibes")


def test_wire_format_round_trip_and_request_size():
    """A tensor survives encode/decode; request_bytes counts what http.client sends."""
    x = np.random.default_rng(0).random((1, 1, 8, 8)).astype(np.float32)
    body, headers = codec.encode_tensor(x, deadline_ms=12.5, device_id="d1")
    back = codec.decode_tensor(
        body, headers[codec.HEADER_SHAPE], headers[codec.HEADER_DTYPE], (1, 1, 8, 8), "float32"
    )
    assert np.array_equal(back, x)
    assert headers[codec.HEADER_DEADLINE] == "12.500"
    sent = bytearray()

    class Recorder(http.client.HTTPConnection):
        def send(self, data):
            sent.extend(data)

    connection = Recorder("gateway.local", 8080)
    connection.putrequest("POST", codec.PATH, skip_host=True, skip_accept_encoding=True)
    for name, value in {"Host": "gateway.local:8080", **headers}.items():
        connection.putheader(name, value)
    connection.endheaders(body)
    assert codec.request_bytes("gateway.local:8080", headers, body) == len(sent)
    assert codec.request_size((1, 1, 8, 8), "float32", "d1") == codec.request_bytes(
        codec.NOMINAL_HOST, codec.encode_tensor(x, codec.NOMINAL_DEADLINE_MS, "d1")[1], body
    )


@pytest.mark.parametrize(
    ("body", "shape", "dtype", "message"),
    [
        (b"\0" * 256, None, "float32", "missing"),
        (b"\0" * 256, "1,1,8", "float32", "does not match"),
        (b"\0" * 256, "1,x", "float32", "comma-separated"),
        (b"\0" * 256, "1,1,8,0", "float32", "non-positive"),
        (b"\0" * 256, "1,1,8,8", "float64", "dtype"),
        (b"\0" * 255, "1,1,8,8", "float32", "needs 256"),
        (np.full(64, np.inf, np.float32).tobytes(), "1,1,8,8", "float32", "NaN or infinite"),
    ],
)
def test_malformed_requests_are_wire_format_errors(body, shape, dtype, message):
    """Every malformed request is refused with a sentence saying why."""
    with pytest.raises(codec.WireFormatError, match=message):
        codec.decode_tensor(body, shape, dtype, (1, 1, 8, 8), "float32")


def test_an_int8_body_whose_scale_overflows_is_refused():
    """A finite scale of 1e38 times 255 codes is Inf in float32: refused, not decoded."""
    codes = np.full((1, 1, 8, 8), 255, np.uint8).tobytes()
    with pytest.raises(codec.WireFormatError, match="overflows"):
        codec.decode_tensor(codes, "1,1,8,8", "uint8", (1, 1, 8, 8), "float32", "int8", "1e38", "0")


def test_an_answer_never_carries_nan_or_inf():
    """JSON has no NaN: a non-finite output cannot be encoded, and an answer holding one is
    refused by the device."""
    for bad in (np.nan, np.inf):
        with pytest.raises(codec.WireFormatError, match="NaN or infinite"):
            codec.encode_answer("teacher", np.array([[bad, 0.5]]), 1.0)
    with pytest.raises(codec.WireFormatError):
        codec.decode_answer(b'{"stage": "t", "probs": [NaN, 0.5]}', 2)


def test_answers_round_trip_and_malformed_answers_are_refused():
    """The gateway's JSON answer decodes to the stage and its probabilities."""
    payload = codec.encode_answer("teacher", np.array([[0.25, 0.75]]), 1.23456)
    stage, probs = codec.decode_answer(payload, 2)
    assert stage == "teacher" and np.allclose(probs, [[0.25, 0.75]])
    for bad in (b"{", b'{"stage": "t", "probs": [1]}', b'{"probs": [0.5, 0.5]}'):
        with pytest.raises(codec.WireFormatError):
            codec.decode_answer(bad, 2)


SPEC = inputs.InputSpec("x", (1, 1, 8, 8), "float32", "NCHW")


def test_arrays_are_read_as_frames(tmp_path):
    """A batch, a single sample and an .npz 'x' each become batch-1 frames, in order."""
    batch = np.arange(3 * 64, dtype=np.float32).reshape(3, 1, 8, 8)
    np.save(tmp_path / "batch.npy", batch)
    np.save(tmp_path / "one.npy", batch[1, :])  # no batch dimension
    np.savez(tmp_path / "data.npz", x=batch[:2], y=np.array([1, 2]))
    paths = [tmp_path / "batch.npy", tmp_path / "one.npy", tmp_path / "data.npz"]
    frames = [inputs.prepare(f, SPEC) for f in inputs.iter_frames(paths, SPEC)]
    assert len(frames) == 6 and all(f.shape == (1, 1, 8, 8) for f in frames)
    assert np.array_equal(frames[3][0], batch[1])


def test_images_are_resized_and_scaled(tmp_path):
    """A PNG becomes the model's input: grey, resized, pixel / 255; with fused
    pre-processing it stays a uint8 frame in the bundle's layout."""
    Image.fromarray(np.full((16, 16), 255, np.uint8)).save(tmp_path / "white.png")
    (frame,) = [inputs.prepare(f, SPEC) for f in inputs.iter_frames([tmp_path / "white.png"], SPEC)]
    assert frame.shape == (1, 1, 8, 8) and np.allclose(frame, 1.0)
    fused = inputs.InputSpec("x", (1, 12, 10, 3), "uint8", "NHWC", {"color": "bgr"})
    rgb = np.zeros((24, 20, 3), np.uint8)
    rgb[..., 0] = 200  # red
    Image.fromarray(rgb).save(tmp_path / "red.png")
    frame = inputs.prepare(tmp_path / "red.png", fused)
    assert frame.shape == (1, 12, 10, 3) and frame.dtype == np.uint8
    assert (frame[..., 2] == 200).all() and (frame[..., 0] == 0).all()  # BGR order


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("missing.npy", None, "does not exist"),
        ("notes.txt", b"hello", "unknown type"),
        ("bad.npy", b"not numpy", "not a readable"),
        ("shape.npy", np.zeros((2, 3)), "shape"),
        ("nan.npy", np.full((1, 1, 8, 8), np.nan, np.float32), "NaN"),
        ("bad.png", b"not a png", "not a readable image"),
    ],
)
def test_bad_inputs_are_one_sentence(tmp_path, name, content, message):
    """Missing files, unknown types, unreadable or ill-shaped data: InputFileError."""
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        np.save(path, content)
    with pytest.raises(inputs.InputFileError, match=message):
        for frame in inputs.iter_frames([path], SPEC):
            inputs.prepare(frame, SPEC)


def test_an_unknown_backend_is_refused_by_name(tmp_path):
    """The loader table names the stage, its backend and what it can load."""
    stage = {"name": "tiny", "backend": "tensorrt", "artifact": "stages/tiny/model.plan"}
    with pytest.raises(loaders.StageLoadError, match=r"'tensorrt' backend.*onnxruntime, tvm"):
        loaders.load_stage(tmp_path, stage)
    stage = {"name": "tiny", "backend": "onnxruntime", "artifact": "stages/tiny/none.onnx"}
    with pytest.raises(loaders.StageLoadError, match="missing"):
        loaders.load_stage(tmp_path, stage)
