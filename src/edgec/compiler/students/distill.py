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

The optimiser is Adam with a cosine schedule over mini-batches. A holdout carved from the
*training* part (:data:`HOLDOUT_SHARE`, deterministic) drives early stopping — the validation
part stays unseen, so the accuracy the bundle reports is honest. The holdout metric is
accuracy with labels, else agreement with the teacher; the best epoch's weights are kept.
With a fixed seed the student is the same bit for bit: :func:`deterministic` fixes the seed,
the thread count and ``torch.use_deterministic_algorithms`` and restores them afterwards.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from edgec.compiler.students.context import OnnxModule

HOLDOUT_SHARE = 0.1
TRAIN_THREADS = 1


@dataclass(frozen=True)
class DistillSettings:
    """How a student is trained.

    Attributes:
        epochs: Maximum epochs.
        temperature: Softmax temperature ``T`` of the soft term.
        alpha: Weight of the hard (label) term; the soft term gets ``1 - alpha``.
        lr: Adam learning rate (cosine-annealed to zero over ``epochs``).
        weight_decay: Adam weight decay.
        batch_size: Mini-batch size.
        patience: Stop after this many epochs without a better holdout score.
        seed: Seed for initialisation order, shuffling and the holdout.
        threads: torch threads while training (fixed, for reproducibility).
    """

    epochs: int = 40
    temperature: float = 4.0
    alpha: float = 0.5
    lr: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 64
    patience: int = 10
    seed: int = 0
    threads: int = TRAIN_THREADS

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
    """

    epochs_run: int
    best_epoch: int
    holdout: float
    metric: str
    loss: str
    seconds: float
    history: list[EpochStats] = field(default_factory=list)

    def to_json(self) -> dict:
        """The manifest form: no history and no wall time, so bundles stay reproducible."""
        return {
            "epochs_run": self.epochs_run,
            "best_epoch": self.best_epoch,
            "holdout_metric": self.metric,
            "holdout": round(self.holdout, 6),
            "loss": self.loss,
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


def holdout_split(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic (fit, holdout) index arrays over ``n`` training samples."""
    order = np.random.default_rng(seed).permutation(n)
    count = max(1, round(n * HOLDOUT_SHARE))
    return np.sort(order[count:]), np.sort(order[:count])


def train_student(
    student: nn.Module,
    x: np.ndarray,
    teacher_logits: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    settings: DistillSettings | None = None,
    progress: Callable[[EpochStats], None] | None = None,
) -> TrainReport:
    """Train ``student`` in place on ``x`` and keep its best holdout weights.

    Args:
        student: The model to train (a pruned teacher, or a fresh network).
        x: Training inputs (float32, batch first).
        teacher_logits: The teacher's logits on ``x`` (``None``: train from labels only).
        labels: Integer labels for ``x`` (``None``: distillation alone).
        settings: Training settings.
        progress: Called after every epoch.

    Raises:
        ValueError: Neither teacher logits nor labels were given.
    """
    settings = settings or DistillSettings()
    if teacher_logits is None and labels is None:
        raise ValueError("train_student needs teacher logits, labels or both")
    started = time.perf_counter()
    fit, hold = holdout_split(len(x), settings.seed)
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    tt = None if teacher_logits is None else torch.from_numpy(teacher_logits.astype(np.float32))
    yt = None if labels is None else torch.from_numpy(labels.astype(np.int64))
    metric = "accuracy" if yt is not None else "agreement"
    hold_target = yt[hold] if yt is not None else tt[hold].argmax(dim=1)
    loss_name = "ce" if tt is None else ("kd" if yt is None else "kd+ce")

    with deterministic(settings.seed, settings.threads):
        params = [p for p in student.parameters() if p.requires_grad]
        optimizer = torch.optim.Adam(params, lr=settings.lr, weight_decay=settings.weight_decay)
        steps = settings.epochs * math.ceil(len(fit) / settings.batch_size)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(steps, 1))
        generator = torch.Generator().manual_seed(settings.seed)
        best_score, best_state, best_epoch = (-1.0, 0.0), None, 0
        history: list[EpochStats] = []
        for epoch in range(1, settings.epochs + 1):
            student.train()
            order = torch.from_numpy(fit)[torch.randperm(len(fit), generator=generator)]
            total, seen = 0.0, 0
            for start in range(0, len(order), settings.batch_size):
                batch = order[start : start + settings.batch_size]
                if len(batch) < 2 and seen:
                    continue  # a batch of one breaks BatchNorm in training mode
                loss = _loss_on(student(xt[batch]), tt, yt, batch, settings)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                total += loss.item() * len(batch)
                seen += len(batch)
            score, hold_loss = _evaluate(student, xt[hold], hold_target, tt, yt, hold, settings)
            stats = EpochStats(epoch, settings.epochs, total / max(seen, 1), score, metric)
            history.append(stats)
            if progress is not None:
                progress(stats)
            if (score, -hold_loss) > best_score:
                best_score, best_epoch = (score, -hold_loss), epoch
                best_state = copy.deepcopy(student.state_dict())
            elif epoch - best_epoch >= settings.patience:
                break
        if best_state is not None:
            student.load_state_dict(best_state)
    student.eval()
    return TrainReport(
        epochs_run=len(history),
        best_epoch=best_epoch,
        holdout=best_score[0],
        metric=metric,
        loss=loss_name,
        seconds=time.perf_counter() - started,
        history=history,
    )


def _evaluate(student, x_hold, target, tt, yt, hold, settings) -> tuple[float, float]:
    """Holdout score (share of matching top-1) and loss, in eval mode."""
    student.eval()
    with torch.no_grad():
        out = student(x_hold)
        loss = _loss_on(out, tt, yt, hold, settings)
    return float((out.argmax(dim=1) == target).float().mean()), float(loss)


def _loss_on(out, tt, yt, index, settings):
    """The distillation loss of ``out`` against the teacher's logits and labels at ``index``."""
    return kd_loss(
        out,
        None if tt is None else tt[index],
        None if yt is None else yt[index],
        settings.temperature,
        settings.alpha,
    )
