"""Function matching's parts: views chosen by the input's kind and drawn reproducibly, mixup
blending inputs and labels alike, and the teacher cache (batched ONNX Runtime, each view once)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from edgec.compiler.students.augment import AugmentPolicy, make_views, mix_targets, policy_for
from edgec.compiler.students.teacher_cache import TeacherCache


def test_the_views_are_chosen_by_the_inputs_kind():
    """Images [C, H, W] with H, W >= 8 get geometry; anything else gets noise; both mixup."""
    assert policy_for((1, 8, 8)).kind == "image"
    assert policy_for((3, 32, 32)).kind == "image"
    assert policy_for((1, 4, 8)).kind == "tensor"  # too small to crop
    assert policy_for((64,)).kind == "tensor"
    assert policy_for((3, 32, 32), "none").kind == "none"
    with pytest.raises(ValueError, match="H, W >= 8"):
        policy_for((64,), "image")
    assert set(policy_for((64,)).to_json()) == {"kind", "noise", "mixup", "mixup_alpha"}


def _views(seed: int, policy: AugmentPolicy, x: torch.Tensor):
    return make_views(x, policy, torch.Generator().manual_seed(seed), x.std(dim=0))


def test_a_seed_gives_the_same_views_and_another_seed_other_views():
    x = torch.rand(16, 1, 12, 12)
    policy = policy_for((1, 12, 12))
    a, b, c = _views(3, policy, x), _views(3, policy, x), _views(4, policy, x)
    assert torch.equal(a.x, b.x) and torch.equal(a.lam, b.lam)
    assert not torch.equal(a.x, c.x)
    assert not torch.equal(a.x, x)  # views, not the inputs
    unchanged = _views(3, policy_for((1, 12, 12), "none"), x)
    assert torch.equal(unchanged.x, x) and torch.equal(unchanged.lam, torch.ones(16))


def test_mixup_blends_inputs_and_labels_with_the_same_weights():
    """Without geometry or noise a view is exactly lam * own + (1 - lam) * partner, the larger
    weight on its own sample, and a label target is blended alike."""
    x = torch.rand(32, 5)
    policy = AugmentPolicy(kind="tensor", noise=0.0, mixup=0.5)
    views = _views(0, policy, x)
    lam = views.lam.view(-1, 1)
    torch.testing.assert_close(views.x, lam * x + (1 - lam) * x[views.partner])
    assert ((views.lam >= 0.5) & (views.lam <= 1)).all()
    assert 0 < int((views.lam < 1).sum()) < 32  # about half are mixed
    targets = torch.eye(3)[torch.arange(32) % 3]
    mixed = mix_targets(targets, views)
    torch.testing.assert_close(mixed.sum(dim=1), torch.ones(32))
    torch.testing.assert_close(mixed, lam * targets + (1 - lam) * targets[views.partner])


def test_tensor_noise_scales_with_each_features_spread():
    x = torch.randn(512, 2) * torch.tensor([1.0, 100.0])
    policy = AugmentPolicy(kind="tensor", noise=0.1, mixup=0.0)
    change = (_views(0, policy, x).x - x).std(dim=0)
    assert 0.07 < float(change[0]) < 0.13 and 7 < float(change[1]) < 13


def _fixed_batch_teacher() -> onnx.ModelProto:
    """[1, 4] -> [1, 3] whose Reshape takes its shape from a node (not an initializer), so the
    batch cannot be freed: the cache must fall back to one view at a time."""
    w = numpy_helper.from_array(np.arange(12, dtype=np.float32).reshape(4, 3) / 10, "w")
    nodes = [
        helper.make_node("Constant", [], ["shape"], value=numpy_helper.from_array(
            np.array([1, 4], np.int64))),
        helper.make_node("Reshape", ["x", "shape"], ["r"]),
        helper.make_node("MatMul", ["r", "w"], ["logits"]),
    ]  # fmt: skip
    graph = helper.make_graph(
        nodes,
        "fixed",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 3])],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_the_teacher_runs_batched_and_computes_each_view_once(digits_teacher):
    """The digits teacher (exported at batch 1, flattening with a Reshape) runs as one batch,
    gives per view what batch 1 gives, and a view seen before is answered from the cache."""
    rng = np.random.default_rng(0)
    x = rng.random((40, 1, 8, 8), dtype=np.float32)
    cache = TeacherCache(digits_teacher)
    first = cache(x[:30])
    assert cache.batched and cache.computed == 30 and cache.reused == 0
    again = cache(x[10:40])
    assert cache.computed == 40 and cache.reused == 20
    np.testing.assert_array_equal(again[:20], first[10:30])
    single = TeacherCache(digits_teacher)
    single._batched, single.batched = None, False  # the batch-1 path, as reference
    np.testing.assert_allclose(single(x), cache(x), rtol=1e-4, atol=1e-5)
    assert cache.stats() == {"batched": True, "views_computed": 40, "views_reused": 60}


def test_a_teacher_whose_batch_is_fixed_runs_one_view_at_a_time():
    teacher = _fixed_batch_teacher()
    x = np.arange(24, dtype=np.float32).reshape(6, 4)
    cache = TeacherCache(teacher)
    out = cache(x)
    assert not cache.batched
    np.testing.assert_allclose(out, x @ (np.arange(12, dtype=np.float32).reshape(4, 3) / 10))
