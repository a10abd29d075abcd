"""Cross-layer equalization: exact in FP32 on ONNX Runtime, evens out ranges, refuses with reasons.

Models: a small MobileNet-style net built here (dense stem, depthwise and pointwise convs,
Relu / Clip(0, inf) / nothing between them, channels with very different ranges), and light
models of the onnx wheel with Conv -> Relu -> Conv chains (random weights,
``randomized_light_model``, canonicalized first so BatchNormalization is folded). Tolerance:
``pass_helpers`` (rtol 1e-4, atol 1e-5).
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from models import randomized_light_model
from onnx import helper, numpy_helper
from pass_helpers import assert_same_outputs, make_model, random_feeds, run, run_pass

from edgec.compiler.canonicalize import canonicalize
from edgec.compiler.int8.accuracy_guard import sqnr_db
from edgec.passes.equalize import EqualizeCrossLayerPass
from edgec.passes.quantize import Int8Flavour, calibrate, preprocess, quantize_model


def _uneven(rng, shape, spread: float = 3.0) -> np.ndarray:
    """He-scaled weights whose output channels' ranges differ by up to ``10**spread``."""
    fan_in = int(np.prod(shape[1:]))
    w = rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)
    scale = 10.0 ** rng.uniform(-spread / 2, spread / 2, size=shape[0])
    return w * scale.reshape((-1,) + (1,) * (len(shape) - 1))


def _mobilenet_like(seed: int = 0, spread: float = 3.0) -> onnx.ModelProto:
    """stem 3x3 -> Relu -> depthwise 3x3 -> Clip(0) -> pointwise 1x1 -> pointwise 1x1 -> Relu
    -> depthwise 3x3 (multiplier 2) -> Relu -> pointwise 1x1: five equalizable pairs; channel
    ranges spread over ``spread`` decades."""
    rng = np.random.default_rng(seed)
    c = 8
    inits = {
        "w0": _uneven(rng, [c, 3, 3, 3], spread),
        "b0": rng.standard_normal(c) * 0.1,
        "w1": _uneven(rng, [c, 1, 3, 3], spread),
        "b1": rng.standard_normal(c) * 0.1,
        "w2": _uneven(rng, [c, c, 1, 1], spread),
        "b2": rng.standard_normal(c) * 0.1,
        "w3": _uneven(rng, [c, c, 1, 1], spread),
        "w4": _uneven(rng, [2 * c, 1, 3, 3], spread),
        "b4": rng.standard_normal(2 * c) * 0.1,
        "w5": _uneven(rng, [4, 2 * c, 1, 1], spread),
        "zero": np.array(0.0, np.float32),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w0", "b0"], ["c0"], pads=[1, 1, 1, 1], name="stem"),
        helper.make_node("Relu", ["c0"], ["a0"]),
        helper.make_node("Conv", ["a0", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], group=c,
                         name="dw1"),
        helper.make_node("Clip", ["c1", "zero"], ["a1"]),
        helper.make_node("Conv", ["a1", "w2", "b2"], ["c2"], name="pw1"),
        helper.make_node("Conv", ["c2", "w3"], ["c3"], name="pw2"),
        helper.make_node("Relu", ["c3"], ["a3"]),
        helper.make_node("Conv", ["a3", "w4", "b4"], ["c4"], pads=[1, 1, 1, 1], group=c,
                         name="dw2"),
        helper.make_node("Relu", ["c4"], ["a4"]),
        helper.make_node("Conv", ["a4", "w5"], ["y"], name="head"),
    ]  # fmt: skip
    return make_model(nodes, {"x": [2, 3, 8, 8]}, ["y"], inits)


def _weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}


def _ratio(ranges: np.ndarray) -> float:
    return float(ranges.max() / ranges.min())


def _out_ranges(w: np.ndarray) -> np.ndarray:
    return np.abs(w).reshape(w.shape[0], -1).max(axis=1)


def _in_ranges(w: np.ndarray) -> np.ndarray:
    return np.abs(w).swapaxes(0, 1).reshape(w.shape[1], -1).max(axis=1)


def test_mobilenet_like_outputs_unchanged_and_ranges_even_out(caplog):
    """Dense and depthwise pairs through Relu, Clip(0) and nothing: same ORT outputs; each
    equalized Conv1's per-channel range ratio (max/min) drops; one info line."""
    model = _mobilenet_like()
    with caplog.at_level(logging.INFO, logger="edgec.passes.equalize"):
        after, modified = run_pass(model, EqualizeCrossLayerPass())
    assert modified
    assert_same_outputs(model, after)
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.INFO] == [
        "EqualizeCrossLayerPass: equalized 5 Conv pairs (5 found)"
    ]
    before, now = _weights(model), _weights(after)
    for name in ("w0", "w1", "w2", "w3", "w4"):  # every Conv1 of a pair
        assert _ratio(_out_ranges(now[name])) < 0.5 * _ratio(_out_ranges(before[name])), name
    # a dense Conv2's input-channel ranges match its Conv1's output ranges after convergence
    np.testing.assert_allclose(_out_ranges(now["w2"]), _in_ranges(now["w3"]), rtol=0.05)


def test_second_run_barely_moves_the_weights():
    """The scales settle: equalizing an equalized model moves no weight by more than 0.5%."""
    once, _ = run_pass(_mobilenet_like(), EqualizeCrossLayerPass())
    twice, _ = run_pass(once, EqualizeCrossLayerPass())
    # the first run stopped within SETTLED; a second run may nudge within that, not more
    for name, w in _weights(twice).items():
        np.testing.assert_allclose(w, _weights(once)[name], rtol=5e-3, atol=1e-7)
    assert_same_outputs(once, twice)


def _pair(between: list, w1_name="w1", shared_w2=False, **extra_inits):
    rng = np.random.default_rng(3)
    inits = {
        w1_name: _uneven(rng, [4, 3, 3, 3]),
        "w2": _uneven(rng, [5, 4, 1, 1]),
        **extra_inits,
    }
    nodes = [
        helper.make_node("Conv", ["x", w1_name], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        *between,
        helper.make_node("Conv", [between[-1].output[0] if between else "c1", "w2"], ["y"],
                         name="conv2"),
    ]  # fmt: skip
    outputs = ["y"]
    if shared_w2:
        nodes.append(helper.make_node("Conv", ["y", "w2"], ["z"], name="conv3"))
        inits["w2"] = _uneven(rng, [4, 4, 1, 1])
        outputs = ["z"]
    return make_model(nodes, {"x": [1, 3, 6, 6]}, outputs, inits)


@pytest.mark.parametrize(
    ("case", "model", "reason"),
    [
        (
            "relu6",
            _pair(
                [helper.make_node("Clip", ["c1", "lo", "hi"], ["a"])],
                lo=np.array(0.0, np.float32),
                hi=np.array(6.0, np.float32),
            ),
            "Clip with max 6 (ReLU6-style) does not commute",
        ),
        (
            "clip-min",
            _pair([helper.make_node("Clip", ["c1", "lo"], ["a"])], lo=np.array(-1.0, np.float32)),
            "Clip with min other than 0",
        ),
        ("sigmoid", _pair([helper.make_node("Sigmoid", ["c1"], ["a"])]), None),
        ("shared-weight", _pair([], shared_w2=True), "is shared with another node"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_refused_pairs_are_left_exactly_as_they_were(case, model, reason, caplog):
    """ReLU6/Clip with a bound, Clip(min != 0), a non-homogeneous activation, a shared weight:
    not modified, and the reason is logged at debug (a Sigmoid is simply not a chain)."""
    with caplog.at_level(logging.DEBUG, logger="edgec.passes.equalize"):
        after, modified = run_pass(model, EqualizeCrossLayerPass())
    assert not modified
    for name, w in _weights(model).items():
        np.testing.assert_array_equal(_weights(after)[name], w)
    messages = [r.getMessage() for r in caplog.records]
    if reason:
        assert any("Conv 'conv1' not equalized" in m and reason in m for m in messages), messages
    assert not any(r.levelno >= logging.INFO for r in caplog.records)


def test_output_with_two_consumers_is_refused(caplog):
    """Conv1's output also feeds a graph output: a scale would change it, so it is kept."""
    rng = np.random.default_rng(4)
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1"),
        helper.make_node("Relu", ["c1"], ["a"]),
        helper.make_node("Conv", ["a", "w2"], ["y"], name="conv2"),
        helper.make_node("Conv", ["c1", "w3"], ["z"], name="conv3"),
    ]
    inits = {
        "w1": _uneven(rng, [4, 3, 1, 1]),
        "w2": _uneven(rng, [2, 4, 1, 1]),
        "w3": _uneven(rng, [2, 4, 1, 1]),
    }
    model = make_model(nodes, {"x": [1, 3, 4, 4]}, ["y", "z"], inits)
    with caplog.at_level(logging.DEBUG, logger="edgec.passes.equalize"):
        _, modified = run_pass(model, EqualizeCrossLayerPass())
    assert not modified
    assert any("other consumers" in r.getMessage() for r in caplog.records)


def test_weight_that_is_a_graph_input_is_refused(caplog):
    """A weight a user can feed at run time (an initializer listed as an input) is kept."""
    model = _pair([helper.make_node("Relu", ["c1"], ["a"])])
    w1 = next(i for i in model.graph.initializer if i.name == "w1")
    model.graph.input.append(helper.make_tensor_value_info("w1", w1.data_type, list(w1.dims)))
    with caplog.at_level(logging.DEBUG, logger="edgec.passes.equalize"):
        _, modified = run_pass(model, EqualizeCrossLayerPass())
    assert not modified
    assert any("'w1' is a graph input" in r.getMessage() for r in caplog.records)


def test_grouped_conv2_that_is_not_depthwise_is_refused(caplog):
    """Conv2 with group=2 over 4 channels: refused with the reason."""
    rng = np.random.default_rng(5)
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1"),
        helper.make_node("Relu", ["c1"], ["a"]),
        helper.make_node("Conv", ["a", "w2"], ["y"], group=2, name="conv2"),
    ]
    inits = {"w1": _uneven(rng, [4, 3, 1, 1]), "w2": _uneven(rng, [4, 2, 1, 1])}
    model = make_model(nodes, {"x": [1, 3, 4, 4]}, ["y"], inits)
    with caplog.at_level(logging.DEBUG, logger="edgec.passes.equalize"):
        _, modified = run_pass(model, EqualizeCrossLayerPass())
    assert not modified
    assert any("grouped (group=2) but not depthwise" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    "name",
    [
        "inception_v1",
        *(
            pytest.param(name, marks=pytest.mark.slow)
            for name in ("inception_v2", "densenet121", "zfnet512", "resnet50")
        ),
    ],
)
def test_light_model_keeps_its_outputs(name):
    """A light model with Conv -> Relu -> Conv chains (random weights, BN folded by
    canonicalize): pairs are equalized, ORT outputs (logits) stay within rtol 1e-4, atol 1e-6
    of the output's largest magnitude (resnet50's logits reach ~90: an element that cancels to
    ~0.1 carries float32 rounding of its ~90-sized terms, ~3e-7 of them, whatever the weights)."""
    model = randomized_light_model(name)
    for softmax in (n for n in model.graph.node if n.op_type == "Softmax"):  # densenet: none
        model.graph.output.append(helper.make_tensor_value_info(softmax.input[0], 1, None))
    model = canonicalize(model)
    ir_model = ir.serde.deserialize_model(model)
    assert EqualizeCrossLayerPass()(ir_model).modified
    after = ir.serde.serialize_model(ir_model)
    feeds = random_feeds(model, seed=1)
    for want, got in zip(run(model, feeds), run(after, feeds), strict=True):
        assert np.abs(want).max() > 1e-6
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6 * np.abs(want).max())


@pytest.mark.parametrize("name", ["squeezenet", "shufflenet"])
def test_light_models_without_an_equalizable_pair_are_left_alone(name):
    """The other light models with Conv -> Relu -> Conv have no pair the pass may touch
    (squeezenet's squeeze output feeds two expand convs, shufflenet's convs meet through
    channel shuffles and concats; vgg19 and alexnet's through pooling and LRN): nothing
    changes."""
    model = canonicalize(randomized_light_model(name))
    ir_model = ir.serde.deserialize_model(model)
    assert not EqualizeCrossLayerPass()(ir_model).modified
    after = ir.serde.serialize_model(ir_model)
    feeds = random_feeds(model, seed=1)
    for want, got in zip(run(model, feeds), run(after, feeds), strict=True):
        np.testing.assert_array_equal(got, want)


def test_preprocess_option_equalizes_and_per_tensor_int8_gets_closer_to_fp32():
    """``preprocess(model, equalize=True)``: same FP32 outputs as without; quantized u8s8
    per-tensor (7-bit weights) from its own calibration, its output SQNR against FP32 on
    held-out inputs rises by more than 10 dB (6 -> 23 dB here) on the uneven MobileNet-style
    model."""
    model = _mobilenet_like(spread=2.0)
    rng = np.random.default_rng(7)
    calibration = rng.standard_normal((64, 3, 8, 8)).astype(np.float32)
    held_out = rng.standard_normal((32, 3, 8, 8)).astype(np.float32)
    flavour = Int8Flavour(per_channel=False, reduce_range=True)
    sqnr = {}
    for equalize in (False, True):
        pre = preprocess(model, equalize=equalize)
        assert_same_outputs(preprocess(model), pre)
        qdq = quantize_model(pre, calibrate(pre, calibration), flavour)
        want = np.concatenate([run(pre, {"x": held_out[i : i + 2]})[0] for i in range(0, 32, 2)])
        got = np.concatenate([run(qdq, {"x": held_out[i : i + 2]})[0] for i in range(0, 32, 2)])
        sqnr[equalize] = sqnr_db(want, got)
    assert sqnr[True] > sqnr[False] + 10.0, sqnr


def test_relu6_as_relu_equalizes_through_relu6_like_the_paper(caplog):
    """``relu6_as_relu=True``: the ReLU6 (Clip 0..6) of an equalized pair becomes Relu, and
    the model then computes exactly what the original does with Relu in its place (the only
    FP32 change is the dropped bound); the info line says so."""
    between = [helper.make_node("Clip", ["c1", "lo", "hi"], ["a"], name="relu6")]
    bounds = {"lo": np.array(0.0, np.float32), "hi": np.array(6.0, np.float32)}
    model = _pair(between, **bounds)
    with caplog.at_level(logging.INFO, logger="edgec.passes.equalize"):
        after, modified = run_pass(model, EqualizeCrossLayerPass(relu6_as_relu=True))
    assert modified
    assert [n.op_type for n in after.graph.node] == ["Conv", "Relu", "Conv"]
    assert any("1 ReLU6 replaced by ReLU" in r.getMessage() for r in caplog.records)
    as_relu = _pair([helper.make_node("Relu", ["c1"], ["a"])])
    assert_same_outputs(as_relu, after)
    # and the bound mattered: the original model's outputs differ
    feeds = {"x": 3 * random_feeds(model)["x"]}
    assert not np.allclose(run(model, feeds)[0], run(after, feeds)[0], rtol=1e-3)
