"""FoldPadIntoConvPass: zero spatial Pads fold into the Conv (both Pad forms); others stay."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper
from pass_helpers import assert_same_outputs, make_model, ops, run_pass

from edgec.passes.fold_pad import FoldPadIntoConvPass

W = {"w": np.random.default_rng(0).standard_normal((4, 3, 3, 3))}
SPATIAL = [0, 0, 1, 2, 0, 0, 2, 1]  # [begin N, C, H, W, end N, C, H, W]


def _pad_conv(opset: int, pads=SPATIAL, value=0.0, mode="constant", conv_pads=(1, 1, 1, 1)):
    inits = dict(W)
    if opset < 11:
        pad = helper.make_node("Pad", ["x"], ["p"], pads=pads, value=value, mode=mode)
    else:
        inits |= {"pads": np.array(pads, np.int64), "value": np.array(value)}
        pad = helper.make_node("Pad", ["x", "pads", "value"], ["p"], mode=mode)
    conv = helper.make_node("Conv", ["p", "w"], ["y"], pads=list(conv_pads))
    return make_model([pad, conv], {"x": [1, 3, 6, 6]}, ["y"], inits, opset=opset)


@pytest.mark.parametrize("opset", [9, 13])
def test_zero_pad_folds_into_the_conv(opset):
    """Opset 9 (attribute pads) and opset 13 (input pads): Pad disappears, pads add up."""
    model = _pad_conv(opset)
    after, modified = run_pass(model, FoldPadIntoConvPass())
    assert modified and ops(after) == ["Conv"]
    conv_pads = next(a.ints for a in after.graph.node[0].attribute if a.name == "pads")
    assert list(conv_pads) == [2, 3, 3, 2]
    assert_same_outputs(model, after)


@pytest.mark.parametrize(
    ("case", "kwargs"),
    [
        ("non-zero value", {"value": 1.0}),
        ("reflect mode", {"mode": "reflect"}),
        ("channel padding", {"pads": [0, 1, 1, 1, 0, 0, 1, 1]}),
    ],
)
def test_pad_that_is_not_a_zero_border_stays(case, kwargs):
    """A Pad the Conv's zero padding cannot express is left alone."""
    model = _pad_conv(13, **kwargs)
    after, modified = run_pass(model, FoldPadIntoConvPass())
    assert not modified, case
    assert ops(after) == ["Pad", "Conv"]
