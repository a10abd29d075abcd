"""Knowledge distillation: the loss is Hinton's, KD without labels trains a student to agree
with the teacher, a fixed seed gives the same student, and early stopping stops."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from edgec.compiler.canonicalize import canonicalize
from edgec.compiler.evaluate import agreement
from edgec.compiler.loading import load_model
from edgec.compiler.students.convert import onnx_to_torch
from edgec.compiler.students.derive import teacher_logits
from edgec.compiler.students.distill import (
    DistillSettings,
    batchnorm_for_training,
    kd_loss,
    train_student,
)
from edgec.data import load_dataset


@pytest.fixture(scope="module")
def digits_teacher(request) -> onnx.ModelProto:
    """The example teacher, canonical (its BatchNorms folded into the convolutions)."""
    teacher_path = request.config.rootpath / "examples" / "digits" / "teacher.onnx"
    return canonicalize(load_model(teacher_path, {}).proto)


@pytest.fixture(scope="module")
def digits_with_teacher_logits(digits_teacher):
    """The digits split and the example teacher's ONNX Runtime logits on both parts."""
    data = load_dataset("digits")
    return (
        data,
        teacher_logits(digits_teacher, data.x_train),
        teacher_logits(digits_teacher, data.x_val),
    )


def _small_student(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


def test_kd_loss_is_hintons_formula():
    """alpha * CE + (1 - alpha) * T^2 * KL(teacher_T || student_T), by hand."""
    rng = np.random.default_rng(0)
    s = torch.from_numpy(rng.standard_normal((4, 5)).astype(np.float32))
    t = torch.from_numpy(rng.standard_normal((4, 5)).astype(np.float32))
    y = torch.tensor([0, 1, 2, 3])
    temp, alpha = 3.0, 0.3
    p, q = F.softmax(t / temp, dim=1), F.softmax(s / temp, dim=1)
    kl = (p * (p.log() - q.log())).sum(dim=1).mean()
    ce = -F.log_softmax(s, dim=1)[torch.arange(4), y].mean()
    expected = alpha * ce + (1 - alpha) * temp**2 * kl
    torch.testing.assert_close(kd_loss(s, t, y, temp, alpha), expected)
    torch.testing.assert_close(kd_loss(s, t, None, temp, alpha), temp**2 * kl)
    torch.testing.assert_close(kd_loss(s, None, y, temp, alpha), ce)
    assert float(kd_loss(t, t, None, temp, alpha)) == pytest.approx(0.0, abs=1e-6)


def test_kd_without_labels_trains_a_student_to_agree_with_the_teacher(
    digits_with_teacher_logits,
):
    data, train_logits, val_logits = digits_with_teacher_logits
    student = _small_student()
    with torch.no_grad():
        before = agreement(student(torch.from_numpy(data.x_val)).numpy(), val_logits)
    report = train_student(
        student, data.x_train, train_logits, None, DistillSettings(epochs=15, lr=1e-2)
    )
    with torch.no_grad():
        after = agreement(student(torch.from_numpy(data.x_val)).numpy(), val_logits)
    assert report.loss == "kd" and report.metric == "agreement"
    assert before < 0.3 and after > 0.85, (before, after)
    losses = [epoch.loss for epoch in report.history]
    assert losses[-1] < losses[0] / 2


def test_a_fixed_seed_gives_the_same_student_and_restores_torch_settings(
    digits_with_teacher_logits,
):
    data, train_logits, _ = digits_with_teacher_logits
    threads = torch.get_num_threads()
    states = []
    for _ in range(2):
        student = _small_student(seed=1)
        settings = DistillSettings(epochs=2, seed=5)
        train_student(student, data.x_train, train_logits, data.y_train, settings)
        states.append(student.state_dict())
    for key in states[0]:
        assert torch.equal(states[0][key], states[1][key]), key
    assert torch.get_num_threads() == threads
    assert not torch.are_deterministic_algorithms_enabled()


def test_early_stopping_ends_training_when_the_holdout_stops_improving(
    digits_with_teacher_logits,
):
    """With a zero learning rate nothing improves: patience 2 stops after epoch 3."""
    data, train_logits, _ = digits_with_teacher_logits
    settings = DistillSettings(epochs=20, lr=0.0, patience=2)
    report = train_student(_small_student(), data.x_train, train_logits, data.y_train, settings)
    assert report.epochs_run == 3 and report.best_epoch == 1


def test_training_from_labels_alone_uses_cross_entropy(digits_with_teacher_logits):
    data, _, _ = digits_with_teacher_logits
    report = train_student(
        _small_student(), data.x_train, None, data.y_train, DistillSettings(epochs=1)
    )
    assert report.loss == "ce" and report.metric == "accuracy"
    with pytest.raises(ValueError, match="teacher logits, labels or both"):
        train_student(_small_student(), data.x_train, None, None)


def test_training_batchnorms_wrap_the_convs_and_fold_back_exactly(
    digits_teacher, digits_with_teacher_logits
):
    """Inside the block each non-head conv trains with a BatchNorm; on exit the module has its
    original layer types again and computes what the trained conv+BatchNorm computed."""
    data, train_logits, _ = digits_with_teacher_logits
    module = onnx_to_torch(digits_teacher)
    x = torch.from_numpy(data.x_val[:32])
    with batchnorm_for_training(module) as student:
        kinds = [type(layer).__name__ for layer in student.layers.values()]
        assert kinds == ["Sequential"] * 3 + ["Linear"] * 2
        train_student(student, data.x_train, train_logits, None, DistillSettings(epochs=1))
        with torch.no_grad():
            expected = student.eval()(x)
    assert [type(layer).__name__ for layer in module.layers.values()] == (
        ["Conv2d"] * 3 + ["Linear"] * 2
    )
    with torch.no_grad():
        torch.testing.assert_close(module(x), expected, rtol=1e-4, atol=1e-4)
