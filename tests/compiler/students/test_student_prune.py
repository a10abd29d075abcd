"""Structured pruning keeps residual additions, depthwise groups and concatenations consistent,
lands under the MAC target, never touches the head's classes, and the result exports to ONNX."""

from __future__ import annotations

import pytest
import torch
from student_nets import SHAPE, canonical_teacher, random_inputs
from torch import nn

from edgec.compiler.students.convert import onnx_to_torch
from edgec.compiler.students.export import export_student, verify_export
from edgec.compiler.students.prune import MAC_TOLERANCE, PruningError, prune_to_mac_ratio


def _convs(module) -> list[nn.Conv2d]:
    return [m for m in module.layers.values() if isinstance(m, nn.Conv2d)]


def _residual_additions_keep_matching_channels(pruned) -> None:
    stem, _a1, a2, _b1, b2, proj = _convs(pruned)
    assert a2.out_channels == stem.out_channels  # x + a2(a1(x))
    assert proj.out_channels == b2.out_channels  # proj(x) + b2(b1(x))
    assert stem.out_channels < 16 and b2.out_channels < 32


def _depthwise_convolutions_stay_depthwise(pruned) -> None:
    depthwise = [c for c in _convs(pruned) if c.groups > 1]
    assert len(depthwise) == 2
    for conv in depthwise:
        assert conv.groups == conv.in_channels == conv.out_channels
    assert depthwise[1].out_channels < 64


def _concatenation_feeds_the_sum_of_its_branches(pruned) -> None:
    _, left, right, after = _convs(pruned)
    assert after.in_channels == left.out_channels + right.out_channels
    assert left.out_channels < 8 and right.out_channels < 12
    # The head's inputs follow the pruned conv through the max-pool and the flatten.
    assert pruned.head_layers()[0].in_features == after.out_channels * 4 * 4


@pytest.mark.parametrize(
    ("name", "structure"),
    [
        ("residual", _residual_additions_keep_matching_channels),
        ("depthwise", _depthwise_convolutions_stay_depthwise),
        ("concat", _concatenation_feeds_the_sum_of_its_branches),
    ],
)
def test_pruned_net_stays_consistent_runs_and_exports(name, structure, tmp_path):
    """Half the MACs: fewer channels, coupled channels pruned together, the head's 10 classes
    and the 3 input channels kept; the pruned module runs on a batch and its ONNX export
    matches it."""
    module = onnx_to_torch(canonical_teacher(name, tmp_path))
    before = [c.out_channels for c in _convs(module)]
    result = prune_to_mac_ratio(module, torch.zeros(SHAPE), 0.5)
    pruned = result.module
    assert 0.5 * (1 - 2 * MAC_TOLERANCE) <= result.mac_ratio <= 0.5
    assert [c.out_channels for c in _convs(module)] == before, "the teacher was modified"
    convs = _convs(pruned)
    assert convs[0].in_channels == 3
    assert sum(c.out_channels for c in convs) < sum(before)
    assert [layer.out_features for layer in pruned.head_layers()] == [10]
    structure(pruned)
    with torch.no_grad():
        assert pruned(torch.from_numpy(random_inputs(5))).shape == (5, 10)
    onnx_model = export_student(pruned, "x", SHAPE, "logits", 17)
    assert verify_export(onnx_model, pruned, random_inputs(3)) < 1e-4


def test_a_channel_shuffle_that_pruning_would_break_raises_pruning_error(tmp_path):
    module = onnx_to_torch(canonical_teacher("shuffle", tmp_path))
    with pytest.raises(PruningError, match="does not run"):
        prune_to_mac_ratio(module, torch.zeros(SHAPE), 0.5)
