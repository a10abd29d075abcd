"""The ONNX -> TFLite converter against ONNX Runtime on graphs with real CNNs' ops."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

pytest.importorskip("ai_edge_litert", reason="the litert extra (ai-edge-litert) is not installed")

from litert_graphs import mobile_block_model, unsupported_op_model

from edgec.passes.quantize import Int8Flavour, calibrate, preprocess, quantize_model
from edgec.targets.litert.backend import integer_report
from edgec.targets.litert.convert import UnsupportedModelError, convert
from edgec.targets.litert.flatbuffer import operator_names
from edgec.targets.litert.runner import LiteRtRunner


def _runner(tmp_path, data: bytes, name: str = "m.tflite") -> LiteRtRunner:
    path = tmp_path / name
    path.write_bytes(data)
    return LiteRtRunner(path, threads=1)


def _ort(model: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    # Exact integer products, as LiteRT computes them (x86 without VNNI saturates u8s8).
    options.add_session_config_entry("session.x64quantprecision", "1")
    return ort.InferenceSession(model.SerializeToString(), options)


def _samples(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 1, 3, 16, 16)).astype(np.float32)


def _sqnr_db(ref: np.ndarray, test: np.ndarray) -> float:
    return float(10 * np.log10((ref**2).sum() / max(((ref - test) ** 2).sum(), 1e-20)))


def _qdq(model: onnx.ModelProto, flavour: Int8Flavour, exclude=()) -> onnx.ModelProto:
    pre = preprocess(model)
    table = calibrate(pre, _samples(32, seed=1).reshape(32, 3, 16, 16), "minmax", "test")
    return quantize_model(pre, table, flavour, nodes_to_exclude=exclude)


def test_fp32_keeps_every_output_of_a_mobile_block(tmp_path):
    """Depthwise, HardSwish, SE, swish, pooling with pads, Concat, NCHW input and two outputs
    (one 4-D): the .tflite answers as ONNX Runtime within 1e-4 (relative to each output's
    range), outputs in ONNX shapes."""
    model = mobile_block_model()
    runner = _runner(tmp_path, convert(model))
    session = _ort(model)
    assert runner.input_names == ["x"]
    for x in _samples(5):
        got = runner.run({"x": x})
        want = session.run(None, {"x": x})
        assert [g.shape for g in got] == [w.shape for w in want] == [(1, 10), (1, 16, 4, 4)]
        for g, w in zip(got, want, strict=True):
            assert np.abs(g - w).max() <= 1e-4 * max(1.0, np.abs(w).max())


@pytest.mark.parametrize("activations", ["int8", "uint8"])
def test_int8_is_full_integer_and_tracks_the_qdq_model(tmp_path, activations):
    """The guard-approved Q/DQ model becomes a .tflite whose every non-I/O tensor is
    integer, answering as the Q/DQ model does under exact integer arithmetic."""
    qdq = _qdq(mobile_block_model(), Int8Flavour(activations, per_channel=True))
    data = convert(qdq)
    assert integer_report(data) == {"fully_integer": True, "float_tensors": 0}
    ops = operator_names(data)
    assert "DEPTHWISE_CONV_2D" in ops and "DEQUANTIZE" in ops and "QUANTIZE" in ops
    runner, session = _runner(tmp_path, data), _ort(qdq)
    probs = [(runner.run({"x": x})[0], session.run(None, {"x": x})[0]) for x in _samples(20)]
    got, want = np.concatenate([p[0] for p in probs]), np.concatenate([p[1] for p in probs])
    assert _sqnr_db(want, got) > 25
    assert (got.argmax(1) == want.argmax(1)).mean() >= 0.9


def test_integer_io_takes_and_gives_integers_on_the_model_grids(tmp_path):
    """int8/uint8 I/O (the Coral's): the runner quantizes float inputs on the input's grid
    and dequantizes outputs, so the answers match the float-I/O model's."""
    qdq = _qdq(mobile_block_model(), Int8Flavour("int8", per_channel=True))
    float_io = _runner(tmp_path, convert(qdq), "f.tflite")
    for dtype in ("int8", "uint8"):
        runner = _runner(tmp_path, convert(qdq, io_dtype=dtype), f"{dtype}.tflite")
        assert [d["dtype"].__name__ for d in runner.inputs] == [dtype]
        assert {d["dtype"].__name__ for d in runner.outputs} == {dtype}
        for x in _samples(3):
            got, want = runner.run({"x": x})[0], float_io.run({"x": x})[0]
            assert np.abs(got - want).max() <= 2 * 1 / 256 + 1e-6  # within two output steps


def test_layers_the_guard_kept_in_fp32_run_in_float(tmp_path):
    """Nodes excluded from INT8 (the repair loop's) run in float between DEQUANTIZE and
    QUANTIZE; the model is then not fully integer and says so."""
    model = mobile_block_model()
    pre = preprocess(model)
    convs = [n.name for n in pre.graph.node if n.op_type == "Conv"]
    qdq = _qdq(model, Int8Flavour("int8", per_channel=True), exclude=convs[-1:])
    data = convert(qdq)
    report = integer_report(data)
    assert report["fully_integer"] is False and report["float_tensors"] > 0
    runner, session = _runner(tmp_path, data), _ort(qdq)
    for x in _samples(3):
        assert _sqnr_db(session.run(None, {"x": x})[0], runner.run({"x": x})[0]) > 25


def test_an_op_the_converter_lacks_is_named():
    """Erf has no mapping: the error names the op and its node, nothing is half-built."""
    with pytest.raises(UnsupportedModelError, match=r"the ONNX op Erf \(node 'Erf"):
        convert(unsupported_op_model())


def _fc_weight_scales(data: bytes) -> list[int]:
    from edgec.targets.litert.flatbuffer import schema

    s = schema()
    model = s.ModelT.InitFromPackedBuf(bytearray(data), 0)
    sub = model.subgraphs[0]
    codes = [max(c.builtinCode, c.deprecatedBuiltinCode) for c in model.operatorCodes]
    return [
        len(sub.tensors[op.inputs[1]].quantization.scale)
        for op in sub.operators
        if codes[op.opcodeIndex] == s.BuiltinOperator.FULLY_CONNECTED
    ]


def test_fully_connected_weights_per_channel_unless_the_edge_tpu_needs_per_tensor(tmp_path):
    """INT8 FC weights keep the Q/DQ model's per-channel scales (the .tflite then answers
    within one output step of the Q/DQ model); per_channel_fc=False (edgetpu_compiler's
    format) writes one scale."""
    qdq = _qdq(mobile_block_model(), Int8Flavour("int8", per_channel=True))
    per_channel, per_tensor = convert(qdq), convert(qdq, per_channel_fc=False)
    assert _fc_weight_scales(per_channel) == [10]
    assert _fc_weight_scales(per_tensor) == [1]
    runner, session = _runner(tmp_path, per_channel), _ort(qdq)
    for x in _samples(5):
        assert np.abs(runner.run({"x": x})[0] - session.run(None, {"x": x})[0]).max() <= 2 / 256


def test_an_fp32_tflite_that_disagrees_with_onnx_runtime_is_refused(tmp_path):
    """The build's self-check: a .tflite whose answers are not the ONNX model's (here another
    model's weights) is a BadInputError naming the difference; the right one passes."""
    from edgec.errors import BadInputError
    from edgec.targets.litert.backend import _fp32_difference

    source = tmp_path / "m.onnx"
    onnx.save(mobile_block_model(seed=0), source)
    right = _runner(tmp_path, convert(mobile_block_model(seed=0)), "right.tflite")
    wrong = _runner(tmp_path, convert(mobile_block_model(seed=3)), "wrong.tflite")
    assert _fp32_difference(source, right) < 1e-4
    with pytest.raises(BadInputError, match="differs from ONNX Runtime by"):
        _fp32_difference(source, wrong)


def test_a_file_litert_refuses_is_one_sentence(tmp_path):
    """Garbage in a .tflite: LiteRT's own complaint, as a BadInputError naming the file."""
    from edgec.errors import BadInputError

    path = tmp_path / "broken.tflite"
    path.write_bytes(b"not a flatbuffer at all")
    with pytest.raises(BadInputError, match=r"LiteRT cannot load broken\.tflite"):
        LiteRtRunner(path)


def test_the_compiler_keeps_litert_delegate_chatter_off_stderr(tmp_path):
    """LiteRT's C++ prints 'Created TensorFlow Lite XNNPACK delegate' on fd 2 once per
    process; the compiler's runner keeps it out of what the user sees."""
    import subprocess
    import sys

    path = tmp_path / "m.tflite"
    path.write_bytes(convert(mobile_block_model()))
    code = (
        "import sys; from edgec.targets.litert.runner import LiteRtRunner; "
        "LiteRtRunner(sys.argv[1]); print('loaded')"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0 and done.stdout.strip() == "loaded", done.stderr
    assert "XNNPACK delegate" not in done.stderr


def test_hard_swish_written_as_x_times_hard_sigmoid_becomes_one_op(tmp_path):
    """Pre-processing splits HardSwish into x * HardSigmoid(x): the converter writes one
    HARD_SWISH for it, and the SE gate's lone HardSigmoid as add/clip/scale; the answers
    are ONNX Runtime's."""
    model = preprocess(mobile_block_model())
    assert [n.op_type for n in model.graph.node].count("HardSigmoid") == 2
    data = convert(model)
    ops = operator_names(data)
    assert ops.count("HARD_SWISH") == 1 and "MAXIMUM" in ops and "MINIMUM" in ops
    runner, session = _runner(tmp_path, data), _ort(model)
    for x in _samples(3):
        got, want = runner.run({"x": x})[0], session.run(None, {"x": x})[0]
        assert np.abs(got - want).max() <= 1e-4 * max(1.0, np.abs(want).max())


def test_an_identity_of_an_initializer_is_a_constant_for_the_op_reading_it(tmp_path):
    """torch exports some biases as Identity(initializer) (MobileNetV3-small's SE block): the
    layer reading it converts (it failed with a KeyError) and answers as ONNX Runtime."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(3)
    weight = numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    bias = numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "b")
    graph = helper.make_graph(
        [
            helper.make_node("Identity", ["b"], ["b_copy"]),
            helper.make_node("Conv", ["x", "w", "b_copy"], ["y"], pads=[1, 1, 1, 1]),
        ],
        "identity_bias",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 16, 16])],
        [weight, bias],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    runner = _runner(tmp_path, convert(model))
    x = _samples(1)[0]
    got = runner.run({"x": x})[0]
    want = _ort(model).run(None, {"x": x})[0]
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()
