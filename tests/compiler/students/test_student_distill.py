"""Knowledge distillation: the loss is Hinton's, KD without labels trains a student to agree
with the teacher, function matching asks the teacher about the very views the student sees,
unlabelled inputs join the distillation term, a fixed seed gives the same student, and early
stopping stops (on agreement with the teacher on the validation split when it is given)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from edgec.compiler.evaluate import agreement
from edgec.compiler.students.convert import onnx_to_torch
from edgec.compiler.students.derive import teacher_logits
from edgec.compiler.students.distill import (
    DistillSettings,
    EarlyStop,
    Holdout,
    PlateauSchedule,
    batchnorm_for_training,
    kd_loss,
    train_student,
    train_with_unlabeled,
)
from edgec.compiler.students.teacher_cache import TeacherCache
from edgec.data import load_dataset


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
    settings = DistillSettings(epochs=15, lr=1e-2, augment="none")
    report = train_student(student, data.x_train, train_logits, None, settings)
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
        settings = DistillSettings(epochs=2, seed=5, augment="none")
        train_student(student, data.x_train, train_logits, data.y_train, settings)
        states.append(student.state_dict())
    for key in states[0]:
        assert torch.equal(states[0][key], states[1][key]), key
    assert torch.get_num_threads() == threads
    assert not torch.are_deterministic_algorithms_enabled()


@pytest.mark.parametrize(("schedule", "epochs_run"), [("plateau", 9), ("cosine", 7)])
def test_early_stopping_ends_training_when_the_holdout_stops_improving(
    digits_with_teacher_logits, schedule, epochs_run
):
    """With a zero learning rate nothing improves: the first full five-epoch window sets the
    record at epoch 5, and patience 2 finds the stall after epoch 7; the cosine schedule stops
    there, the plateau schedule cools down for two more epochs (a quarter of seven)."""
    data, train_logits, _ = digits_with_teacher_logits
    settings = DistillSettings(epochs=20, lr=0.0, patience=2, augment="none", schedule=schedule)
    report = train_student(_small_student(), data.x_train, train_logits, data.y_train, settings)
    assert report.epochs_run == epochs_run and report.best_epoch == 1
    assert report.stopped_early and report.cap_hint("tiny") is None
    assert report.to_json()["stopped_early"] is True


def test_a_student_still_improving_at_the_epoch_cap_says_so(digits_with_teacher_logits):
    """Two epochs of a learning student: early stopping cannot fire, so the cap ended it and
    the user is told that more epochs may help (the manifest records it too)."""
    data, train_logits, _ = digits_with_teacher_logits
    settings = DistillSettings(epochs=2, lr=1e-2, patience=5, augment="none")
    report = train_student(_small_student(), data.x_train, train_logits, data.y_train, settings)
    assert report.epochs_run == 2 and not report.stopped_early
    assert report.to_json()["stopped_early"] is False
    hint = report.cap_hint("tiny")
    assert hint is not None and "'tiny'" in hint and "2-epoch cap" in hint
    assert "--distill-epochs" in hint


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
        settings = DistillSettings(epochs=1, augment="none")
        train_student(student, data.x_train, train_logits, None, settings)
        with torch.no_grad():
            expected = student.eval()(x)
    assert [type(layer).__name__ for layer in module.layers.values()] == (
        ["Conv2d"] * 3 + ["Linear"] * 2
    )
    with torch.no_grad():
        torch.testing.assert_close(module(x), expected, rtol=1e-4, atol=1e-4)


class _CountingTeacher:
    """The digits teacher through a :class:`TeacherCache`, remembering what it was asked."""

    def __init__(self, teacher):
        self.cache = TeacherCache(teacher)
        self.asked: list[np.ndarray] = []

    def __call__(self, x: np.ndarray) -> np.ndarray:
        self.asked.append(x.copy())
        return self.cache(x)


def test_function_matching_asks_the_teacher_about_the_views_the_student_sees(
    digits_teacher, digits_with_teacher_logits
):
    """Every batch is a fresh view (not a training input), the teacher labels exactly those
    views, and the student learns to agree with the teacher on the validation split, where
    early stopping judges it."""
    data, _, val_logits = digits_with_teacher_logits
    teacher = _CountingTeacher(digits_teacher)
    student = _small_student()
    settings = DistillSettings(epochs=6, lr=1e-2, alpha=0.0)
    report = train_student(
        student, data.x_train, teacher, None, settings, holdout=Holdout(data.x_val, val_logits)
    )
    asked = np.concatenate(teacher.asked)
    # No holdout carved out; 1,347 inputs are passed over twice per epoch (2,048 at least).
    assert report.passes == 2
    assert len(asked) == report.epochs_run * 2 * len(data.x_train)
    train_rows = {row.tobytes() for row in data.x_train}
    assert sum(row.tobytes() in train_rows for row in asked) < len(asked) // 100
    assert report.metric == "agreement" and report.holdout > 0.65  # untrained: < 0.3
    with torch.no_grad():
        after = agreement(student(torch.from_numpy(data.x_val)).numpy(), val_logits)
    assert after == pytest.approx(report.holdout)  # the kept epoch is the one judged


def test_the_same_seed_gives_the_same_views_so_the_next_student_costs_no_teacher_run(
    digits_teacher, digits_with_teacher_logits
):
    """Two students trained with one seed see the same views: the second is answered from the
    cache, and both come out bit for bit the same."""
    data, _, val_logits = digits_with_teacher_logits
    cache = TeacherCache(digits_teacher)
    states = []
    for _ in range(2):
        student = _small_student(seed=1)
        settings = DistillSettings(epochs=2, seed=5)
        holdout = Holdout(data.x_val, val_logits)
        report = train_student(
            student, data.x_train, cache, data.y_train, settings, holdout=holdout
        )
        states.append(student.state_dict())
        computed = cache.computed
    # 2 epochs of 2 passes (1,347 inputs; an epoch is at least 2,048).
    assert report.passes == 2
    assert computed == 2 * 2 * len(data.x_train) and cache.reused == computed
    for key in states[0]:
        assert torch.equal(states[0][key], states[1][key]), key


def test_unlabelled_inputs_join_the_distillation_term(digits_teacher, digits_with_teacher_logits):
    """Unlabelled inputs are trained on (the teacher labels their views) next to the labelled
    ones; without a teacher, or with fixed logits instead of the teacher, they are refused."""
    data, train_logits, val_logits = digits_with_teacher_logits
    teacher = _CountingTeacher(digits_teacher)
    extra = data.x_val[:100] + 0.05
    settings = DistillSettings(epochs=1)
    report = train_student(
        _small_student(), data.x_train, teacher, data.y_train, settings,
        holdout=Holdout(data.x_val, val_logits), unlabeled=extra,
    )  # fmt: skip
    assert report.samples == len(data.x_train) + 100 and report.loss == "kd+ce"
    assert report.passes == 2  # 1,447 inputs; an epoch is at least 2,048
    assert sum(len(x) for x in teacher.asked) == 2 * (len(data.x_train) + 100)
    with pytest.raises(ValueError, match="need a teacher"):
        train_student(_small_student(), data.x_train, None, data.y_train, unlabeled=extra)
    with pytest.raises(ValueError, match="function matching needs the teacher itself"):
        train_student(
            _small_student(), data.x_train, train_logits, None, settings, None, None, extra
        )


def test_fixed_teacher_logits_train_on_the_inputs_themselves(digits_with_teacher_logits):
    """Logits computed once on the inputs say nothing about other views: under augment=auto
    the student sees the inputs as they are; asking for image views with them is an error."""
    data, train_logits, _ = digits_with_teacher_logits
    report = train_student(
        _small_student(), data.x_train, train_logits, None, DistillSettings(epochs=1)
    )
    assert report.loss == "kd" and report.epochs_run == 1
    with pytest.raises(ValueError, match="function matching needs the teacher itself"):
        settings = DistillSettings(epochs=1, augment="image")
        train_student(_small_student(), data.x_train, train_logits, None, settings)


def test_early_stopping_waits_while_the_holdout_loss_still_falls():
    """Agreement that plateaus below its best does not stop training while the student still
    gets closer to the teacher (lower holdout loss): the stop comes only once neither measure
    has improved for ``patience`` epochs. (Stopping on agreement alone ended an unlabelled-data
    student at epoch 18 of 40, best at 8.)"""
    stop = EarlyStop(patience=3)
    scores = [0.90, 0.92, 0.91, 0.91, 0.91, 0.91, 0.91, 0.91, 0.91]
    losses = [1.00, 0.90, 0.80, 0.70, 0.60, 0.60, 0.61, 0.62, 0.63]
    stopped = [stop.update(s, loss) for s, loss in zip(scores, losses, strict=True)]
    # Agreement alone would stop after epoch 5 (best at 2); the loss improves until epoch 5.
    assert stopped == [False] * 7 + [True, True]
    assert EarlyStop(patience=1).update(0.5, 1.0) is False


def test_a_mean_of_epochs_keeps_one_lucky_epoch_from_ending_a_falling_trend():
    """The holdout loss of a student still improving falls by 0.03 an epoch under noise of
    0.1, and epoch 3 is a lucky low no later epoch beats: judged epoch by epoch it stalls after
    epoch 6 (patience 3); judged on the mean of the last five epochs it does not. A holdout
    that stops moving still ends training, windowed or not."""
    noise = [0.0, 0.1, -0.3, 0.1, 0.0, 0.1, 0.0, 0.1, 0.0, 0.1, 0.0, 0.1]
    losses = [1.0 - 0.03 * epoch + n for epoch, n in enumerate(noise)]

    def stall_epoch(stop: EarlyStop, values: list[float]) -> int | None:
        return next((i + 1 for i, v in enumerate(values) if stop.update(0.9, v)), None)

    assert stall_epoch(EarlyStop(patience=3), losses) == 6
    assert stall_epoch(EarlyStop(patience=3, window=5), losses) is None
    flat = [1.0, 0.8, 0.7] + [0.7] * 10
    # The first full window (epoch 5) sets the record; its mean reaches 0.7 at epoch 7 and
    # stays there: three epochs without a record.
    assert stall_epoch(EarlyStop(patience=3, window=5), flat) == 10
    assert stall_epoch(EarlyStop(patience=3), flat) == 6


def _rates(schedule: PlateauSchedule, optimizer, steps: int) -> list[float]:
    """The learning rate of each of an epoch's ``steps`` optimiser steps."""
    rates = []
    for _ in range(steps):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    return rates


def _optimizer(lr: float = 1.0) -> torch.optim.Optimizer:
    return torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=lr)


def test_the_plateau_schedule_holds_the_rate_until_the_holdout_stalls_then_cools_to_zero():
    """Eight improving epochs, then none: the stall is found after epoch 11 (patience 3), the
    cooldown lasts a quarter of those 11 epochs (3) and falls linearly to zero, and training
    ends with it; the cap (100) played no part."""
    optimizer = _optimizer()
    schedule = PlateauSchedule(optimizer, epochs=100, patience=3, steps_per_epoch=4)
    rates, done, epoch = [], False, 0
    while not done:
        epoch += 1
        rates += _rates(schedule, optimizer, 4)
        score = min(epoch, 8) / 10
        done = schedule.epoch_end(epoch, score, loss=1.0 / min(epoch, 8))
    assert epoch == 14 and schedule.stalled
    assert rates[: 11 * 4] == [1.0] * 44
    cooldown = rates[44:]
    assert cooldown == pytest.approx([1.0 - i / 12 for i in range(12)])
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.0)


def test_the_plateau_schedule_cools_down_in_time_to_end_at_the_cap():
    """A student that never stalls: the cooldown (at least patience // 2 = 5 epochs) starts
    after epoch 3, so training ends at the 8-epoch cap with the rate at zero; not stalled (the
    user is told the cap ended it). A one-epoch cap cools down from the first step."""
    optimizer = _optimizer()
    schedule = PlateauSchedule(optimizer, epochs=8, patience=10, steps_per_epoch=2)
    rates, ended = [], []
    for epoch in range(1, 9):
        rates += _rates(schedule, optimizer, 2)
        ended.append(schedule.epoch_end(epoch, epoch / 10, 1.0 / epoch))
    assert ended == [False] * 7 + [True] and not schedule.stalled
    assert rates[:6] == [1.0] * 6
    assert rates[6:] == pytest.approx([1.0 - i / 10 for i in range(10)])
    optimizer = _optimizer()
    schedule = PlateauSchedule(optimizer, epochs=1, patience=10, steps_per_epoch=4)
    assert _rates(schedule, optimizer, 4) == pytest.approx([1.0, 0.75, 0.5, 0.25])
    assert schedule.epoch_end(1, 0.5, 1.0)


def _noise(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 1, 8, 8), dtype=np.float32)


def test_unlabelled_inputs_that_hurt_are_dropped_for_the_student_without_them(
    digits_teacher, digits_with_teacher_logits
):
    """Inputs that make the student agree less with the teacher on the holdout (here 20
    noise images per labelled one) are not kept: the student is, bit for bit, the one trained
    without them, and the report says so with both scores."""
    data, _, val_logits = digits_with_teacher_logits
    cache = TeacherCache(digits_teacher)
    holdout = Holdout(data.x_val, val_logits)
    settings = DistillSettings(epochs=3, lr=1e-2)
    x, y = data.x_train[:100], data.y_train[:100]
    plain = _small_student(seed=3)
    alone = train_student(plain, x, cache, y, settings, holdout=holdout)
    student = _small_student(seed=3)
    report = train_with_unlabeled(student, x, cache, y, settings, _noise(2000), None, holdout)
    decision = report.unlabeled
    assert decision["kept"] is False and decision["inputs"] == 2000
    assert decision["holdout_with"] < decision["holdout_without"] == round(alone.holdout, 6)
    assert report.holdout == alone.holdout and report.samples == 100
    for key, value in plain.state_dict().items():
        assert torch.equal(student.state_dict()[key], value), key
    assert report.to_json()["unlabeled"] == decision


def test_unlabelled_inputs_are_kept_unless_the_student_without_them_is_better(
    digits_teacher, digits_with_teacher_logits
):
    """Judged by the criterion that picks each student's epoch (holdout score, then loss): a
    given student trained without them (``without``, no second training) that scores worse
    loses to the one trained with them; one that scores better is restored."""
    data, _, val_logits = digits_with_teacher_logits
    cache = TeacherCache(digits_teacher)
    holdout = Holdout(data.x_val, val_logits)
    settings = DistillSettings(epochs=1, lr=1e-2)
    x, y, extra = data.x_train[:200], data.y_train[:200], data.x_train[200:400]
    other = _small_student(seed=9)
    worse = train_student(other, x, cache, y, DistillSettings(epochs=1, lr=0.0), holdout=holdout)
    student = _small_student(seed=3)
    kept = train_with_unlabeled(
        student, x, cache, y, settings, extra, None, holdout, (other.state_dict(), worse)
    )
    assert kept.unlabeled["kept"] is True and kept.samples == 400
    assert kept.holdout > worse.holdout
    better = dataclasses.replace(worse, holdout=1.0)
    student = _small_student(seed=3)
    restored = train_with_unlabeled(
        student, x, cache, y, settings, extra, None, holdout, (other.state_dict(), better)
    )
    assert restored.unlabeled["kept"] is False and restored.holdout == 1.0
    for key, value in other.state_dict().items():
        assert torch.equal(student.state_dict()[key], value), key


@pytest.mark.parametrize(("epoch_inputs", "passes"), [(2048, 23), (1000, 12), (1, 1)])
def test_small_data_is_passed_over_several_times_per_epoch(epoch_inputs, passes):
    """An epoch trains on at least ``epoch_inputs`` inputs: 100 inputs are passed over
    ``ceil(epoch_inputs / 100)`` times, each pass a full shuffle (every input as often)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(100, 1, 8, 8)).astype(np.float32)
    y = np.arange(100) % 10
    seen: list[np.ndarray] = []

    def teacher(views: np.ndarray) -> np.ndarray:
        seen.append(views)
        return np.zeros((len(views), 10), dtype=np.float32)

    settings = DistillSettings(epochs=2, augment="none", epoch_inputs=epoch_inputs)
    report = train_student(_small_student(), x, teacher, y, settings)
    fit = 90  # a tenth carved out for the holdout
    assert report.passes == passes and report.samples == fit
    assert report.steps == 2 * math.ceil(passes * fit / 64)
    assert report.to_json()["passes_per_epoch"] == passes
    assert report.epochs_text() == ("2 epochs" if passes == 1 else f"2 epochs of {passes} passes")
    asked = np.concatenate(seen[1 : 1 + report.steps // 2])  # [0]: the holdout; epoch 1
    counts = {}
    for row in asked:
        counts[row.tobytes()] = counts.get(row.tobytes(), 0) + 1
    assert len(counts) == fit and set(counts.values()) == {passes}
