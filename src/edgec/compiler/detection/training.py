"""The training loop of a detection student: function matching on shifted views.

Each batch becomes fresh *views*: every frame shifted by up to :data:`SHIFT` pixels in x and y
(the edge pixels replicated into the gap), and the teacher — in torch, in eval mode — is asked
for its boxes and class scores on exactly those views; the student learns them with
:func:`~edgec.compiler.detection.distill_loss.detection_kd_loss`. This is the classifiers'
function matching (:mod:`edgec.compiler.students.augment`) with the one view that keeps a
detection frame a detection frame: a shift moves each object across the grid of candidates, so
every candidate learns objects at every offset, where fixed frames show each object at one
offset only. Matching the teacher's outputs on the fixed training frames alone let a pruned
student memorise them (on digits-detect: holdout loss still falling, validation mAP@0.5 7%).

AdamW with the classifiers' plateau schedule
(:class:`~edgec.compiler.students.distill.PlateauSchedule`): the rate holds until the loss on a
held-out tenth of the training frames (unshifted, the teacher's outputs on them computed once)
has not fallen for ``patience`` epochs (``--distill-patience``), then cools down to zero and
training ends, at the latest after ``epochs``; the epoch with the lowest holdout loss is kept.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import torch
import torch.nn.functional as F

from edgec.compiler.detection.distill_loss import DetectionLoss, detection_kd_loss
from edgec.compiler.students.distill import PlateauSchedule

BATCH = 64
LEARNING_RATE = 2e-3
WEIGHT_DECAY = 1e-4
HOLDOUT_SHARE = 0.1
# Epochs without a lower holdout loss. The classifiers' students wait 20 (measured on
# benchmarks/distill.py); detection students keep the 10 their benchmark was measured with.
PATIENCE = 10
SHIFT = 8  # pixels: one grid cell of a stride-8 head; a few percent of a larger frame


def shifted_views(x: torch.Tensor, shift: int, generator: torch.Generator) -> torch.Tensor:
    """``x`` (``[N, C, H, W]``) with each frame moved by its own random whole-pixel offset in
    ``[-shift, shift]`` along both axes, edge pixels replicated into the gap."""
    if shift <= 0 or x.dim() != 4:
        return x
    n, _, h, w = x.shape
    padded = F.pad(x, (shift, shift, shift, shift), mode="replicate")
    offsets = torch.randint(0, 2 * shift + 1, (n, 2), generator=generator)
    return torch.stack(
        [padded[i, :, dy : dy + h, dx : dx + w] for i, (dy, dx) in enumerate(offsets.tolist())]
    )


def train_detector(
    student: torch.nn.Module,
    teacher: torch.nn.Module,
    x: np.ndarray,
    loss: DetectionLoss,
    epochs: int,
    seed: int,
    shift: int = SHIFT,
    boxes_index: int = 0,
    patience: int = PATIENCE,
) -> dict:
    """Train ``student`` to match ``teacher`` on views of ``x``; keep the best holdout epoch.

    Args:
        student: A module returning ``(boxes, scores)`` like the teacher (trained in place).
        teacher: The teacher as a torch module (left untouched, run in eval mode).
        x: The training frames ``[N, C, H, W]`` float32.
        loss: The loss settings.
        epochs: Most epochs to run (the holdout's stall may end training sooner).
        seed: Seed of the holdout split, the shuffling and the views.
        shift: Largest shift of a view, in pixels (0: the frames as they are).
        boxes_index: Which of the two outputs (the graph's order) holds the boxes.
        patience: Epochs without a lower holdout loss before the cooldown starts.

    Returns:
        The manifest record: epochs run, whether the stall (not the cap) ended them, best
        epoch, its holdout loss, the views.
    """

    def run(module: torch.nn.Module, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        outputs = module(inputs)  # (boxes, scores) for the loss, whatever the graph's order
        return outputs[boxes_index], outputs[1 - boxes_index]

    rng = np.random.default_rng(seed)
    order = rng.permutation(len(x))
    n_hold = max(1, int(len(x) * HOLDOUT_SHARE))
    hold, train = order[:n_hold], order[n_hold:]
    xt = torch.from_numpy(np.ascontiguousarray(x))
    teacher = teacher.eval()
    held_x = xt[torch.from_numpy(hold)]
    with torch.no_grad():
        held_targets = run(teacher, held_x)
    opt = torch.optim.AdamW(student.parameters(), lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY)
    sched = PlateauSchedule(opt, epochs, patience, math.ceil(len(train) / BATCH))
    gen = torch.Generator().manual_seed(seed)
    best, best_epoch, best_state = float("inf"), 0, None
    epoch = 0
    for epoch in range(1, epochs + 1):
        student.train()
        perm = torch.from_numpy(train)[torch.randperm(len(train), generator=gen)]
        for start in range(0, len(perm), BATCH):
            views = shifted_views(xt[perm[start : start + BATCH]], shift, gen)
            with torch.no_grad():
                targets = run(teacher, views)
            value = detection_kd_loss(run(student, views), targets, loss)
            opt.zero_grad()
            value.backward()
            opt.step()
            sched.step()
        student.eval()
        with torch.no_grad():
            held = float(detection_kd_loss(run(student, held_x), held_targets, loss))
        if held < best:
            best, best_epoch = held, epoch
            best_state = copy.deepcopy(student.state_dict())
        if sched.epoch_end(epoch, -held, held):
            break
    if best_state is not None:
        student.load_state_dict(best_state)
    return {
        "epochs_run": epoch,
        "stopped_early": sched.stalled,
        "best_epoch": best_epoch,
        "holdout_loss": round(best, 6) if best_epoch else None,
        "views": {"kind": "shift", "max_pixels": shift},
    }
