"""StepwiseRun: a model run a part at a time gives what a run from its input gives.

The model has a skip connection (``b + relu(a)``: ``relu(a)`` must be kept past ``b``) and a
DequantizeLinear of an initializer (a constant node: run again wherever it is read, never
kept). Each tensor is asked for in graph order, as bias correction does, and compared with
:func:`tensor_batches` (the graph up to the tensor, from the input).
"""

from __future__ import annotations

import numpy as np
from onnx import helper, numpy_helper
from pass_helpers import make_model

from edgec.passes.layer_io import StepwiseRun, tensor_batches


def _model():
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Conv", ["x", "wa"], ["a"], name="a", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["a"], ["ra"], name="relu"),
        helper.make_node("DequantizeLinear", ["wb_q", "wb_s"], ["wb"], name="wb_dq"),
        helper.make_node("Conv", ["ra", "wb", "bb"], ["b"], name="b", pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["b", "ra"], ["s"], name="add"),
        helper.make_node("Conv", ["s", "wc"], ["c"], name="c"),
    ]
    inits = {
        "wa": rng.standard_normal((4, 3, 3, 3)),
        "wb_q": rng.integers(-64, 64, (4, 4, 3, 3)).astype(np.int8),
        "wb_s": np.float32(0.02),
        "bb": rng.standard_normal(4),
        "wc": rng.standard_normal((2, 4, 1, 1)),
    }
    return make_model(nodes, {"x": [1, 3, 6, 6]}, ["c"], inits)


def _from_input(model, name, samples):
    return [values[0] for values in tensor_batches(model, [name], samples)]


def test_each_tensor_in_graph_order_equals_a_run_from_the_input(monkeypatch):
    model = _model()
    samples = np.random.default_rng(1).standard_normal((5, 3, 6, 6)).astype(np.float32)
    run = StepwiseRun(model, samples)
    segments = []
    real = StepwiseRun._run

    def recording(self, segment, outputs):
        segments.append([n.name for n in segment.graph.node])
        return real(self, segment, outputs)

    monkeypatch.setattr(StepwiseRun, "_run", recording)
    for name in ("a", "b", "c"):
        got = [values[0] for values in run.values([name])]
        for a, b in zip(got, _from_input(model, name, samples), strict=True):
            np.testing.assert_array_equal(a, b)
    # Each node once; the constant DequantizeLinear with the Conv that reads it.
    assert segments == [["a"], ["wb_dq", "relu", "b"], ["add", "c"]]
    assert not run.from_input


def test_a_changed_node_is_recomputed_and_its_changed_initializer_read_again():
    """After ``b``'s bias and ``wb_q`` change (as bias correction or rounding change them),
    ``recompute(b)`` runs ``b`` again from the kept ``relu(a)``: ``c`` equals a run from the
    input of the changed model."""
    model = _model()
    samples = np.random.default_rng(2).standard_normal((3, 3, 6, 6)).astype(np.float32)
    run = StepwiseRun(model, samples)
    run.values(["a"])
    run.values(["b"])
    inits = {i.name: i for i in model.graph.initializer}
    inits["bb"].CopyFrom(numpy_helper.from_array(np.full(4, 5.0, np.float32), "bb"))
    weights = numpy_helper.to_array(inits["wb_q"]).copy()
    weights[0] = 1
    inits["wb_q"].CopyFrom(numpy_helper.from_array(weights, "wb_q"))
    run.recompute(next(n for n in model.graph.node if n.name == "b"))
    got = [values[0] for values in run.values(["c"])]
    for a, b in zip(got, _from_input(model, "c", samples), strict=True):
        np.testing.assert_array_equal(a, b)
    assert not run.from_input


def test_a_part_that_cannot_run_on_its_own_falls_back_to_running_from_the_input():
    """A sequence kept between parts cannot be fed to a part as an input: from then on the
    values come from runs from the input, and they are still right."""
    nodes = [
        helper.make_node("SplitToSequence", ["x"], ["seq"], name="split", axis=1, keepdims=1),
        helper.make_node("SequenceAt", ["seq", "zero"], ["first"], name="at0"),
        helper.make_node("Relu", ["first"], ["r"], name="relu"),
        helper.make_node("SequenceAt", ["seq", "one"], ["second"], name="at1"),
        helper.make_node("Add", ["r", "second"], ["y"], name="add"),
    ]
    inits = {"zero": np.array(0, np.int64), "one": np.array(1, np.int64)}
    model = make_model(nodes, {"x": [1, 3, 4, 4]}, ["y"], inits)
    samples = np.random.default_rng(3).standard_normal((2, 3, 4, 4)).astype(np.float32)
    run = StepwiseRun(model, samples)
    for name in ("r", "y"):
        got = [values[0] for values in run.values([name])]
        for a, b in zip(got, _from_input(model, name, samples), strict=True):
            np.testing.assert_array_equal(a, b)
    assert run.from_input
