"""Knowledge distillation (Hinton et al., 2015): train a student on the teacher's soft outputs.

The loss for a batch with student logits ``s``, teacher logits ``t`` and labels ``y`` is

    L = alpha * CE(y, s) + (1 - alpha) * T^2 * KL(softmax(t / T) || softmax(s / T))

``T`` (the temperature) softens both distributions so the student learns how the teacher ranks
the wrong classes too; the ``T^2`` factor keeps the soft term's gradients on the scale of the
hard term's as ``T`` changes. Without labels the loss is the soft term alone (``alpha`` is
ignored), so a teacher and unlabelled data are enough. Without teacher logits the loss is the
cross-entropy alone (training from labels, the baseline distillation is compared against).

Training: every convolution outside the classifier head gets a fresh BatchNorm while it
trains (:func:`batchnorm_for_training`), folded back into the convolution afterwards, so the
exported student has exactly the pruned architecture. A canonical teacher has its BatchNorms
folded into its convolutions; once pruned, those biases and scales no longer suit the channels
that are left (on a 32x32 digits teacher pruned to 10% of its MACs, 11 of 51 channels were
dead), and fine-tuning without normalisation crawls (33% vs 84% validation accuracy after 15
epochs in ``benchmarks/distill.py``'s setting).

Function matching (Beyer et al., 2022): every batch becomes fresh views
(:mod:`~edgec.compiler.students.augment`) and, when the teacher is given as a function
(:class:`~edgec.compiler.students.teacher_cache.TeacherCache`), the loss compares the student
with the teacher *on those views*; labels, where the student has them, are blended like the
views (mixup). Unlabelled inputs join the pool for the distillation term only.

The optimiser is Adam. The holdout is a :class:`Holdout`: ``edgec compile`` passes the
validation split with the teacher's logits, so the score is agreement with the teacher and no
label chooses the epoch (the labels judge accuracy afterwards); without one,
:data:`HOLDOUT_SHARE` of the training part is carved out (accuracy with labels, else
agreement). The training length follows the holdout, not a fixed epoch count
(:class:`PlateauSchedule`): the learning rate holds until neither that score nor the holdout
loss, each averaged over the last few epochs, has improved for ``patience`` epochs
(:class:`EarlyStop`), then cools down to zero and training ends; ``epochs`` is only the
cap. The best epoch's weights (score, then loss) are kept. :func:`train_with_unlabeled`
trains a student with unlabelled inputs and without, and keeps the one the holdout prefers.
With a fixed seed the student is the same bit for bit: :func:`deterministic` fixes the seed,
the thread count and ``torch.use_deterministic_algorithms`` and restores them afterwards, and
the views come from their own seeded stream.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import statistics
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from edgec.compiler.students.augment import Views, make_views, mix_targets, policy_for
from edgec.compiler.students.context import OnnxModule

HOLDOUT_SHARE = 0.1
TRAIN_THREADS = 1
VIEW_SEED_OFFSET = 7919  # the views' random stream, apart from the shuffling's


@dataclass(frozen=True)
class DistillSettings:
    """How a student is trained.

    Attributes:
        epochs: Maximum epochs (the cap; the holdout decides when training ends).
        temperature: Softmax temperature ``T`` of the soft term.
        alpha: Weight of the hard (label) term; the soft term gets ``1 - alpha``.
        lr: Adam learning rate (before the cooldown, or the cosine's start). 2e-3, the rate
            ``benchmarks/distill.py`` always trained with: at edgec's earlier 1e-3 its
            pruned and distilled 10% students scored 0.49 ± 0.14 points less (ten seeds,
            paired), the students trained from labels 0.42 ± 0.32 less.
        weight_decay: Adam weight decay.
        batch_size: Mini-batch size.
        patience: Epochs in which neither the holdout score nor the holdout loss improved
            before the cooldown starts (``cosine``: training stops; :class:`EarlyStop`).
            20: on ``benchmarks/distill.py``'s digits with a quarter of the data (ten seeds,
            paired) the 10% students gained over patience 10 — pruned and distilled 0.27 ±
            0.10 points, trained from labels 0.42 ± 0.17 — for about 1.4 times the training
            time; most of them ran to the 150-epoch cap.
        seed: Seed for initialisation order, shuffling and the holdout.
        threads: torch threads while training (fixed, for reproducibility).
        augment: Views for function matching: ``auto`` (by the input's kind), ``image``,
            ``tensor`` or ``none`` (the inputs as they are; see
            :mod:`~edgec.compiler.students.augment`).
        schedule: ``plateau``: the learning rate stays at ``lr`` until the holdout stalls,
            then cools down to zero (:class:`PlateauSchedule`); ``cosine``: cosine-annealed
            over ``epochs``, early stopping on ``patience``.
        epoch_inputs: The fewest inputs an epoch trains on: a smaller training set is passed
            over ``ceil(epoch_inputs / n)`` times per epoch, each pass in a fresh order with
            fresh views, so ``patience`` and ``epochs`` stand for about as many optimiser
            steps on a few hundred inputs as on a few thousand. With one pass per epoch,
            students with 674 training inputs stalled after a few hundred steps: on
            ``benchmarks/distill.py``'s digits with a quarter of the images (ten seeds), 10%
            students trained from labels reached 94.27%, with four passes 95.88% (pruned and
            distilled: 95.27%, 96.77%; the teacher 97.90%). ``1``: one pass.
        stall_window: The stall is judged on the holdout score and loss averaged over the
            last ``stall_window`` epochs (:class:`EarlyStop`); ``1``: each epoch's own.
    """

    epochs: int = 150
    temperature: float = 4.0
    alpha: float = 0.5
    lr: float = 2e-3
    weight_decay: float = 0.0
    batch_size: int = 64
    patience: int = 20
    seed: int = 0
    threads: int = TRAIN_THREADS
    augment: str = "auto"
    schedule: str = "plateau"
    epoch_inputs: int = 2048
    stall_window: int = 5

    def passes(self, inputs: int) -> int:
        """Passes per epoch over ``inputs`` training inputs (:attr:`epoch_inputs`)."""
        return max(1, math.ceil(self.epoch_inputs / max(inputs, 1)))

    def to_json(self) -> dict:
        """The manifest form."""
        return dict(self.__dict__)


@dataclass(frozen=True)
class EpochStats:
    """Progress after one epoch.

    Attributes:
        epoch: 1-based epoch number.
        epochs: Maximum epochs.
        loss: Mean training loss of the epoch.
        holdout: Holdout score (accuracy or agreement).
        metric: ``accuracy`` or ``agreement``.
    """

    epoch: int
    epochs: int
    loss: float
    holdout: float
    metric: str


@dataclass(frozen=True)
class TrainReport:
    """What training did.

    Attributes:
        epochs_run: Epochs actually run (fewer when stopped early).
        best_epoch: The epoch whose weights were kept.
        holdout: Best holdout score.
        metric: ``accuracy`` or ``agreement``.
        loss: ``kd``, ``kd+ce`` or ``ce``.
        seconds: Wall time.
        history: Per-epoch stats.
        steps: Optimiser steps taken.
        samples: Inputs trained on (labelled and unlabelled; each epoch passes over them
            ``passes`` times).
        holdout_loss: The kept epoch's holdout loss.
        unlabeled: With unlabelled inputs, which training was kept (:func:`train_with_unlabeled`).
        stopped_early: Early stopping ended training; ``False``: it ran to ``epochs`` while
            still improving (:meth:`cap_hint`).
    """

    epochs_run: int
    best_epoch: int
    holdout: float
    metric: str
    loss: str
    seconds: float
    history: list[EpochStats] = field(default_factory=list)
    steps: int = 0
    samples: int = 0
    holdout_loss: float = 0.0
    unlabeled: dict | None = None
    stopped_early: bool = False
    passes: int = 1

    def beats(self, other: TrainReport) -> bool:
        """Whether this student is better than ``other`` by the criterion that chose their
        epochs: holdout score first, then holdout loss (lower is better)."""
        return (self.holdout, -self.holdout_loss) > (other.holdout, -other.holdout_loss)

    def epochs_text(self) -> str:
        """``23 epochs``, or ``23 epochs of 2 passes`` when each epoch passed over the inputs
        more than once (small data, :attr:`DistillSettings.epoch_inputs`)."""
        passes = f" of {self.passes} passes" if self.passes > 1 else ""
        return f"{self.epochs_run} epochs{passes}"

    def cap_hint(self, name: str) -> str | None:
        """A line for the user when training ran to the epoch cap while still improving.

        With a fixed-length schedule the cap bound small students most: on
        ``benchmarks/distill.py``'s digits a student at 10% of the teacher's MACs ran all of a
        40-epoch cosine schedule on 9 of 10 seeds and gained 0.87 points with 67. The plateau
        schedule ends training when the holdout stalls, so this says the cap came first.
        """
        if self.stopped_early:
            return None
        return (
            f"'{name}' was still improving when it reached the {self.epochs_run}-epoch cap: a "
            "larger --distill-epochs may give a better student"
        )

    def to_json(self) -> dict:
        """The manifest form: no history and no wall time, so bundles stay reproducible (the
        training cost is recorded as epochs and optimiser steps instead)."""
        return {
            "epochs_run": self.epochs_run,
            "stopped_early": self.stopped_early,
            "steps": self.steps,
            "samples": self.samples,
            "passes_per_epoch": self.passes,
            "best_epoch": self.best_epoch,
            "holdout_metric": self.metric,
            "holdout": round(self.holdout, 6),
            "loss": self.loss,
            **({"unlabeled": self.unlabeled} if self.unlabeled is not None else {}),
        }


_BATCHNORMS = {nn.Conv1d: nn.BatchNorm1d, nn.Conv2d: nn.BatchNorm2d, nn.Conv3d: nn.BatchNorm3d}


@contextlib.contextmanager
def batchnorm_for_training(student: OnnxModule) -> Iterator[OnnxModule]:
    """Give each non-head convolution a fresh BatchNorm inside the block; fold them on exit.

    A BatchNorm in training mode undoes any per-channel scale and shift of the convolution
    before it, so each output channel's weights are rescaled to the standard deviation of
    torch's default initialisation and the bias is zeroed: the function the block trains is
    the same, but Adam's steps are sized as for a fresh layer (folded teacher weights can be
    10x larger, which slows fine-tuning). On exit (also after an error) each convolution is
    replaced by its BatchNorm-folded equivalent in eval mode, so the module has its original
    layer types and shapes again.
    """
    head = set(student.head)
    wrapped = []
    for key, layer in list(student.layers.items()):
        norm = _BATCHNORMS.get(type(layer))
        if norm is not None and key not in head:
            _standardise_channels(layer)
            student.layers[key] = nn.Sequential(layer, norm(layer.out_channels))
            wrapped.append(key)
    try:
        yield student
    finally:
        student.eval()
        for key in wrapped:
            conv, norm = student.layers[key]
            student.layers[key] = fuse_conv_bn_eval(conv, norm)


@torch.no_grad()
def _standardise_channels(conv: nn.Module) -> None:
    """Scale each output channel's weights to std ``1 / sqrt(3 * fan_in)``; zero the bias."""
    weight = conv.weight
    fan_in = weight[0].numel()
    std = weight.flatten(1).std(dim=1, correction=0)
    # A channel with one weight (or all equal) has no spread to rescale: leave it.
    scale = torch.where(std > 1e-8, (1.0 / math.sqrt(3.0 * fan_in)) / std.clamp_min(1e-8), 1.0)
    weight.mul_(scale.view(-1, *([1] * (weight.dim() - 1))))
    if conv.bias is not None:
        conv.bias.zero_()


@contextlib.contextmanager
def deterministic(seed: int, threads: int = TRAIN_THREADS) -> Iterator[None]:
    """Seed torch, fix its thread count and make it deterministic; restore all on exit."""
    threads_before = torch.get_num_threads()
    deterministic_before = torch.are_deterministic_algorithms_enabled()
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.set_num_threads(threads_before)
        torch.use_deterministic_algorithms(deterministic_before)


def kd_loss(
    student: torch.Tensor,
    teacher: torch.Tensor | None,
    labels: torch.Tensor | None,
    temperature: float,
    alpha: float,
) -> torch.Tensor:
    """The distillation loss (module docstring); a missing term drops out."""
    if teacher is None:
        if labels is None:
            raise ValueError("kd_loss needs teacher logits, labels or both")
        return F.cross_entropy(student, labels)
    soft = F.kl_div(
        F.log_softmax(student / temperature, dim=1),
        F.log_softmax(teacher / temperature, dim=1),
        reduction="batchmean",
        log_target=True,
    ) * (temperature**2)
    if labels is None:
        return soft
    return alpha * F.cross_entropy(student, labels) + (1.0 - alpha) * soft


class EarlyStop:
    """When to stop: after ``patience`` epochs in which the student got no closer to the
    teacher by either measure — neither a better holdout score nor a lower holdout loss.

    The score (agreement or accuracy) moves in steps of one holdout sample and plateaus while
    the learning rate is still high; the loss keeps falling as long as the student is still
    approaching the teacher. Stopping on the score alone ended students half-way through the
    cosine schedule (an unlabelled-data run stopped at epoch 18 of 40, best at 8, 1.7 points
    below the same student without unlabelled inputs). Which epoch is *kept* is decided
    apart from this, by (score, -loss).

    Both measures are the means of the last ``window`` epochs. At a constant learning rate
    one epoch's holdout loss moves by up to a quarter from one epoch to the next on a few
    hundred inputs, so a single lucky epoch set a record the next ten could not beat while the
    trend still fell: on ``benchmarks/distill.py``'s digits (a quarter of the data, ten seeds)
    four of ten pruned and distilled 10% students stalled at about 40 epochs and ended 0.6 to
    2.6 points below the other six; judged on a mean of five epochs, the ten gained 0.56
    points on average (paired), students trained from labels alone nothing. A mean moves with
    the trend and not with one epoch; unlike an exponential average it stops moving once the
    values do, so a flat holdout still ends training. The first ``window - 1`` epochs set no
    record (patience counts from the first full window).
    """

    def __init__(self, patience: int, window: int = 1):
        self.patience = patience
        self.best_score = -math.inf
        self.best_loss = math.inf
        self.waited = 0
        self._recent: deque[tuple[float, float]] = deque(maxlen=max(window, 1))

    def update(self, score: float, loss: float) -> bool:
        """Record one epoch's holdout score and loss; ``True`` when training should stop."""
        self._recent.append((score, loss))
        if len(self._recent) < self._recent.maxlen:
            return False  # a mean of fewer epochs is as noisy as one: no record yet
        score = statistics.fmean(s for s, _ in self._recent)
        loss = statistics.fmean(v for _, v in self._recent)
        improved = False
        if score > self.best_score:
            self.best_score, improved = score, True
        if loss < self.best_loss:
            self.best_loss, improved = loss, True
        self.waited = 0 if improved else self.waited + 1
        return self.waited >= self.patience


class PlateauSchedule:
    """Constant learning rate until the student stalls, then a linear cooldown to zero.

    A cosine schedule fixes the training length in advance: the rate is annealed over the cap
    whether the student needed it or not, and on ``benchmarks/distill.py``'s digits the small
    students were still improving when a 40-epoch cap ended them (9 of 10 seeds), while with a
    120-epoch cap early stopping cut them off mid-schedule at a high rate. Here the length
    follows the student (the warmup-stable-decay recipe of Hägele et al., 2024, with the decay
    started by a plateau instead of a step count): the rate stays at ``lr`` until neither the
    holdout score nor the holdout loss, averaged over the last ``window`` epochs, has improved
    for ``patience`` epochs (:class:`EarlyStop`),
    then falls linearly to zero over a cooldown of ``COOLDOWN_SHARE`` of the epochs so far (at
    least ``patience // 2``, at least one), and training ends with the cooldown. The cooldown
    also starts when it would otherwise not end by ``epochs``, which stays the cap.
    """

    COOLDOWN_SHARE = 0.25

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        epochs: int,
        patience: int,
        steps_per_epoch: int,
        window: int = 1,
    ):
        self.optimizer = optimizer
        self.epochs = epochs
        self.patience = patience
        self.steps_per_epoch = max(steps_per_epoch, 1)
        self.base = [group["lr"] for group in optimizer.param_groups]
        self.stopper = EarlyStop(patience, window)
        self.stalled = False
        self.last_epoch: int | None = None  # the cooldown's last epoch, once it has started
        self._steps = 0
        self._cooldown: tuple[int, int] | None = None  # (first step, steps long)
        self._start_if_cap(0)

    def _length(self, done: int) -> int:
        return max(1, self.patience // 2, math.ceil(self.COOLDOWN_SHARE * done))

    def _start(self, done: int, length: int) -> None:
        self._cooldown = (self._steps, length * self.steps_per_epoch)
        self.last_epoch = done + length

    def _start_if_cap(self, done: int) -> None:
        """Start the cooldown after ``done`` epochs if the cap leaves no room to wait."""
        if done + self._length(done) >= self.epochs:
            self._start(done, max(1, self.epochs - done))

    def step(self) -> None:
        """After each optimiser step: set the rate for the next one."""
        self._steps += 1
        if self._cooldown is None:
            return
        first, length = self._cooldown
        factor = max(0.0, 1.0 - (self._steps - first) / length)
        for group, base in zip(self.optimizer.param_groups, self.base, strict=True):
            group["lr"] = base * factor

    def epoch_end(self, epoch: int, score: float, loss: float) -> bool:
        """Record epoch ``epoch``'s holdout score and loss; ``True`` when training is over."""
        if self.last_epoch is not None:
            return epoch >= self.last_epoch
        if self.stopper.update(score, loss):
            self.stalled = True
            self._start(epoch, min(self._length(epoch), self.epochs - epoch))
        else:
            self._start_if_cap(epoch)
        return False


def holdout_split(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic (fit, holdout) index arrays over ``n`` training samples."""
    order = np.random.default_rng(seed).permutation(n)
    count = max(1, round(n * HOLDOUT_SHARE))
    return np.sort(order[count:]), np.sort(order[:count])


@dataclass(frozen=True)
class Holdout:
    """The inputs early stopping judges a student on, with the teacher's logits or labels.

    Attributes:
        x: Inputs (float32, batch first).
        teacher_logits: The teacher's logits on ``x``; when given, the score is agreement with
            the teacher (no labels needed, so labels still judge accuracy unseen).
        labels: Labels for ``x``; the score is accuracy when there are no teacher logits.
    """

    x: np.ndarray
    teacher_logits: np.ndarray | None = None
    labels: np.ndarray | None = None


Teacher = np.ndarray | Callable[[np.ndarray], np.ndarray]


def train_student(
    student: nn.Module,
    x: np.ndarray,
    teacher: Teacher | None = None,
    labels: np.ndarray | None = None,
    settings: DistillSettings | None = None,
    progress: Callable[[EpochStats], None] | None = None,
    holdout: Holdout | None = None,
    unlabeled: np.ndarray | None = None,
) -> TrainReport:
    """Train ``student`` in place on views of ``x`` and keep its best holdout weights.

    Args:
        student: The model to train (a pruned teacher, or a fresh network).
        x: Training inputs (float32, batch first).
        teacher: The teacher: a function from inputs to its logits (function matching: it is
            asked for its logits on every view), or its logits on ``x`` (then the student
            sees the inputs themselves: ``augment`` ``auto`` means ``none``); ``None``: labels
            only.
        labels: Integer labels for ``x`` (``None``: distillation alone).
        settings: Training settings.
        progress: Called after every epoch.
        holdout: What early stopping judges; ``None`` carves :data:`HOLDOUT_SHARE` of ``x``
            out of training for it.
        unlabeled: More inputs without labels, for the distillation term only.

    Raises:
        ValueError: Neither a teacher nor labels; augmented views or unlabeled inputs with
            fixed teacher logits; unlabeled inputs without a teacher.
    """
    settings = settings or DistillSettings()
    if teacher is None and labels is None:
        raise ValueError("train_student needs teacher logits, labels or both")
    fixed = isinstance(teacher, np.ndarray)
    # Fixed logits are the teacher's answers on the inputs themselves: under ``auto`` the
    # student sees those inputs (a view the teacher did not answer would be inconsistent).
    augment = "none" if fixed and settings.augment == "auto" else settings.augment
    policy = policy_for(tuple(x.shape[1:]), augment)
    if fixed and (policy.kind != "none" or unlabeled is not None):
        raise ValueError(
            "function matching needs the teacher itself (a function of the inputs), not its "
            "logits on the training inputs; or use augment='none' and no unlabeled inputs"
        )
    if unlabeled is not None and teacher is None:
        raise ValueError("unlabeled inputs need a teacher to learn from")
    started = time.perf_counter()
    x = np.ascontiguousarray(x, dtype=np.float32)
    if holdout is None:
        fit, hold = holdout_split(len(x), settings.seed)
        hold_logits = None
        if teacher is not None:
            hold_logits = teacher[hold] if fixed else teacher(x[hold])
        holdout = Holdout(x[hold], hold_logits, None if labels is None else labels[hold])
    else:
        fit = np.arange(len(x))
    pool = x if unlabeled is None else np.concatenate([x, unlabeled.astype(np.float32)])
    if unlabeled is not None:
        fit = np.concatenate([fit, np.arange(len(x), len(pool))])
    xt = torch.from_numpy(pool)
    tt = torch.from_numpy(teacher.astype(np.float32)) if fixed else None
    targets = mask = None
    if labels is not None:
        classes = int(labels.max()) + 1
        if holdout.teacher_logits is not None:
            classes = max(classes, holdout.teacher_logits.shape[1])
        elif teacher is not None:
            classes = max(classes, _output_width(teacher, x, fixed))
        targets = torch.zeros(len(pool), classes)
        targets[torch.arange(len(labels)), torch.from_numpy(labels.astype(np.int64))] = 1.0
        mask = torch.zeros(len(pool), dtype=torch.bool)
        mask[: len(labels)] = True
    spread = xt.std(dim=0) if policy.kind == "tensor" else torch.zeros(())
    hold_x = torch.from_numpy(np.ascontiguousarray(holdout.x, dtype=np.float32))
    metric = "agreement" if holdout.teacher_logits is not None else "accuracy"
    hold_logits = None
    if holdout.teacher_logits is not None:
        hold_logits = torch.from_numpy(holdout.teacher_logits.astype(np.float32))
        hold_target = hold_logits.argmax(dim=1)
    elif holdout.labels is not None:
        hold_target = torch.from_numpy(holdout.labels.astype(np.int64))
    else:
        raise ValueError("the holdout needs teacher logits or labels")
    loss_name = "ce" if teacher is None else ("kd" if labels is None else "kd+ce")

    with deterministic(settings.seed, settings.threads):
        params = [p for p in student.parameters() if p.requires_grad]
        optimizer = torch.optim.Adam(params, lr=settings.lr, weight_decay=settings.weight_decay)
        passes = settings.passes(len(fit))  # small data: several per epoch
        per_epoch = math.ceil(passes * len(fit) / settings.batch_size)
        stopper = None  # the plateau schedule has its own (its stall starts the cooldown)
        if settings.schedule == "plateau":
            schedule = PlateauSchedule(
                optimizer, settings.epochs, settings.patience, per_epoch, settings.stall_window
            )
        else:
            steps = settings.epochs * per_epoch
            schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(steps, 1))
            stopper = EarlyStop(settings.patience, settings.stall_window)
        generator = torch.Generator().manual_seed(settings.seed)
        # Views draw from their own stream: the same seed gives the same views for every
        # student, so the teacher cache answers the next student's views.
        view_generator = torch.Generator().manual_seed(settings.seed + VIEW_SEED_OFFSET)
        best_score, best_state, best_epoch = (-1.0, 0.0), None, 0
        history: list[EpochStats] = []
        step_count = 0
        stopped_early = False
        fit_t = torch.from_numpy(fit)
        for epoch in range(1, settings.epochs + 1):
            student.train()
            order = torch.cat(
                [fit_t[torch.randperm(len(fit), generator=generator)] for _ in range(passes)]
            )
            total, seen = 0.0, 0
            for start in range(0, len(order), settings.batch_size):
                batch = order[start : start + settings.batch_size]
                if len(batch) < 2 and seen:
                    continue  # a batch of one breaks BatchNorm in training mode
                views = make_views(xt[batch], policy, view_generator, spread)
                if teacher is None:
                    soft = None
                elif fixed:
                    soft = tt[batch]
                else:
                    soft = torch.from_numpy(teacher(views.x.numpy()))
                hard = None
                if targets is not None:
                    hard = (mix_targets(targets[batch], views), _mixed_mask(mask[batch], views))
                loss = _view_loss(student(views.x), soft, hard, settings)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                step_count += 1
                total += loss.item() * len(batch)
                seen += len(batch)
            score, hold_loss = _evaluate(student, hold_x, hold_target, hold_logits, settings)
            stats = EpochStats(epoch, settings.epochs, total / max(seen, 1), score, metric)
            history.append(stats)
            if progress is not None:
                progress(stats)
            if (score, -hold_loss) > best_score:
                best_score, best_epoch = (score, -hold_loss), epoch
                best_state = copy.deepcopy(student.state_dict())
            if stopper is None:
                if schedule.epoch_end(epoch, score, hold_loss):
                    stopped_early = schedule.stalled
                    break
            elif stopper.update(score, hold_loss):
                stopped_early = True
                break
        if best_state is not None:
            student.load_state_dict(best_state)
    student.eval()
    return TrainReport(
        epochs_run=len(history),
        best_epoch=best_epoch,
        holdout=best_score[0],
        holdout_loss=-best_score[1],
        metric=metric,
        loss=loss_name,
        seconds=time.perf_counter() - started,
        history=history,
        steps=step_count,
        samples=len(fit),
        stopped_early=stopped_early,
        passes=passes,
    )


def train_with_unlabeled(
    student: nn.Module,
    x: np.ndarray,
    teacher: Teacher,
    labels: np.ndarray | None,
    settings: DistillSettings,
    unlabeled: np.ndarray,
    progress: Callable[[EpochStats], None] | None = None,
    holdout: Holdout | None = None,
    without: tuple[dict, TrainReport] | None = None,
) -> TrainReport:
    """Train ``student`` with the unlabelled inputs and without; keep the better one.

    Unlabelled inputs change what the student learns (more of the teacher's function, a
    smaller share of labelled views), and on a given task that can help or hurt. The student
    is trained both ways from the same start with the same seed, and the one the holdout
    prefers — by the same criterion that chose each one's epoch (score, then loss) — is kept;
    a tie keeps the one with the unlabelled inputs. So ``--unlabeled`` never gives a student
    that agrees less with the teacher on the validation split than the recipe without it.
    It costs a second training.

    Args:
        student: As for :func:`train_student`.
        x: As for :func:`train_student`.
        teacher: The teacher as a function of the inputs.
        labels: As for :func:`train_student`.
        settings: As for :func:`train_student`.
        unlabeled: More inputs without labels, for the distillation term only.
        progress: As for :func:`train_student` (called for both trainings).
        holdout: As for :func:`train_student`.
        without: The same student already trained without the unlabelled inputs (its
            ``state_dict`` and report), as :func:`train_student` with the same arguments
            makes it, to save the second training.

    Returns:
        The kept student's report; its ``unlabeled`` says which was kept and why, and
        ``seconds`` counts both trainings (0 for a given ``without``).
    """
    start = copy.deepcopy(student.state_dict())
    if without is None:
        report_without = train_student(student, x, teacher, labels, settings, progress, holdout)
        state_without = copy.deepcopy(student.state_dict())
        student.load_state_dict(start)
    else:
        state_without, report_without = without
    report = train_student(student, x, teacher, labels, settings, progress, holdout, unlabeled)
    kept = not report_without.beats(report)
    if not kept:
        student.load_state_dict(state_without)
    student.eval()
    chosen = report if kept else report_without
    decision = {
        "inputs": len(unlabeled),
        "kept": kept,
        "holdout_with": round(report.holdout, 6),
        "holdout_without": round(report_without.holdout, 6),
    }
    seconds = report.seconds + (report_without.seconds if without is None else 0.0)
    return dataclasses.replace(chosen, unlabeled=decision, seconds=seconds)


def _output_width(teacher: Teacher, x: np.ndarray, fixed: bool) -> int:
    """The teacher's number of outputs (classes)."""
    return int(teacher.shape[1] if fixed else teacher(x[:1]).shape[1])


def _mixed_mask(mask: torch.Tensor, views: Views) -> torch.Tensor:
    """Views whose blended target is known: both samples labelled (or no blending)."""
    return mask & (mask[views.partner] | (views.lam == 1))


def _view_loss(out, soft, hard, settings) -> torch.Tensor:
    """The loss on a batch of views: the KD term against the teacher's logits on the views
    and, with labels, the cross-entropy against the blended labels (labelled views only)."""
    if hard is None:
        return kd_loss(out, soft, None, settings.temperature, settings.alpha)
    target, known = hard
    share = float(known.float().mean())
    ce = F.cross_entropy(out[known], target[known]) * share if share else out.sum() * 0.0
    if soft is None:
        return ce
    kd = kd_loss(out, soft, None, settings.temperature, settings.alpha)
    return settings.alpha * ce + (1.0 - settings.alpha) * kd


def _evaluate(student, x_hold, target, hold_logits, settings) -> tuple[float, float]:
    """Holdout score (share of matching top-1) and loss (KD, else cross-entropy), in eval mode."""
    student.eval()
    with torch.no_grad():
        out = student(x_hold)
        if hold_logits is not None:
            loss = kd_loss(out, hold_logits, None, settings.temperature, settings.alpha)
        else:
            loss = F.cross_entropy(out, target)
    return float((out.argmax(dim=1) == target).float().mean()), float(loss)
