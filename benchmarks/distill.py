"""Does distillation recover the teacher's accuracy? Pruned+distilled students vs scratch.

On a harder variant of scikit-learn's digits (upsampled to 32x32, random affine transforms and
pixel noise, so a teacher does not saturate at ~99%), split by digit image (every view of a
digit on one side: accuracy is measured on digits nothing trained on), for each seed:

1. train a CNN teacher from labels on the training views with the students' schedule (trained
   long, its 10% students catch up with it all the same, see RESULTS.md; ``--teacher-dir``
   keeps it for reruns), export it to ONNX and canonicalise it as ``edgec compile`` would,
   then convert it back with edgec's converter;
2. for each MAC ratio, prune the converted teacher with edgec (``prune_to_mac_ratio``) and train
   students of that same architecture on the same views with the same schedule (``--arms``),
   or, with ``--student-share S``, on the views of a share S of the training images only (the
   teacher knows more than the user's ``--data``, as when it was trained elsewhere):

   * ``scratch``: random initialisation, labels only (cross-entropy) — the baseline;
   * ``scratch+KD``: random initialisation, distilled (Hinton et al.'s setting);
   * ``pruned``: the pruned teacher's weights, fine-tuned from labels only;
   * ``pruned+KD``: the pruned teacher's weights, distilled — what ``edgec compile`` does;
   * ``pruned+KD+unlabeled`` (with ``--unlabeled N``): pruned+KD that also distils on N more
     affine views per image that nobody labelled, as ``edgec compile --unlabeled`` does (kept
     only if it agrees with the teacher at least as well as pruned+KD, else pruned+KD).

Students train by function matching, as in edgec: fresh views every batch, the teacher's logits
(ONNX Runtime on the exported teacher, one cached session per seed) on exactly those views, and
edgec's plateau schedule (``--schedule``): the rate holds until agreement with the teacher on
the validation split stalls, then cools down, and training ends. Accuracy is top-1 on that
stratified validation split, whose labels nothing trains or stops on. The gap recovered by a
student is ``(student - scratch) / (teacher - scratch)``; Hinton et al. report ~90% on MNIST.

Usage::

    python benchmarks/distill.py [--seeds 0 1 2] [--ratios 0.1 0.3] [--epochs 150]
        [--patience 20] [--lr 0.002] [--schedule plateau] [--teacher-epochs N]
        [--teacher-patience 10] [--teacher-lr 0.002] [--teacher-dir DIR] [--teachers-only]
        [--arms ...] [--unlabeled 2] [--jobs 3]
        [--copies 2] [--split images] [--student-share 1] [--epoch-inputs 2048]
        [--stall-window 5] [--rows DIR]
        [--render-from DIR] [--no-write]

Writes its section of ``benchmarks/RESULTS.md`` (between ``<!-- distill:begin -->`` and
``<!-- distill:end -->``) unless ``--no-write``.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import io
import json
import multiprocessing
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from results_md import write_section
from torch import nn

from edgec.compiler.canonicalize import canonicalize
from edgec.compiler.loading import load_model
from edgec.compiler.students.convert import onnx_to_torch
from edgec.compiler.students.distill import (
    DistillSettings,
    Holdout,
    PlateauSchedule,
    batchnorm_for_training,
    deterministic,
    train_student,
    train_with_unlabeled,
)
from edgec.compiler.students.prune import prune_to_mac_ratio
from edgec.compiler.students.teacher_cache import TeacherCache
from edgec.data import SPLIT_SEED, VALIDATION_SHARE, Dataset, digits_arrays, split

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
BEGIN, END = "<!-- distill:begin -->", "<!-- distill:end -->"
ARMS = ("scratch", "scratch+KD", "pruned", "pruned+KD")
UNLABELED_ARM = "pruned+KD+unlabeled"
ALL_ARMS = (*ARMS, UNLABELED_ARM)
# The kept teachers' recipe (teacher_settings), apart from the students' (edgec's defaults).
TEACHER_LR = 2e-3
TEACHER_PATIENCE = 10


def hard_digits(copies: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Digits upsampled to 32x32, ``copies`` random affine views each, plus Gaussian noise.

    Each view is rotated by up to 20 degrees, scaled by 0.8-1.2, sheared by up to 0.2 and
    shifted by up to 4 pixels; noise has a standard deviation of 0.15 (pixels are in [0, 1]).
    """
    x8, y = digits_arrays()
    gen = torch.Generator().manual_seed(seed)
    big = F.interpolate(torch.from_numpy(x8), size=(32, 32), mode="bilinear", align_corners=False)
    views, labels = [], []
    for _ in range(copies):
        n = len(big)
        angle = (torch.rand(n, generator=gen) * 2 - 1) * np.deg2rad(20)
        scale = 0.8 + 0.4 * torch.rand(n, generator=gen)
        shear = (torch.rand(n, generator=gen) * 2 - 1) * 0.2
        shift = (torch.rand(n, 2, generator=gen) * 2 - 1) * (4 / 16)  # grid units: 16 px = 1
        cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
        theta = torch.stack(
            [
                torch.stack([cos, -sin + shear, shift[:, 0]], dim=1),
                torch.stack([sin, cos, shift[:, 1]], dim=1),
            ],
            dim=1,
        )
        grid = F.affine_grid(theta, list(big.shape), align_corners=False)
        warped = F.grid_sample(big, grid, align_corners=False, padding_mode="zeros")
        noisy = warped + 0.15 * torch.randn(warped.shape, generator=gen)
        views.append(noisy.clamp(0, 1).numpy().astype(np.float32))
        labels.append(y)
    return np.concatenate(views), np.concatenate(labels)


class Teacher(nn.Module):
    """Four conv-BN-ReLU layers (16-32-64-64 channels; the first with stride 2, then two 2x2
    max-pools), global average pooling, Linear: about 3 M MACs."""

    def __init__(self):
        super().__init__()
        layers: list[nn.Module] = []
        shape = [(1, 16, 2, False), (16, 32, 1, True), (32, 64, 1, True), (64, 64, 1, False)]
        for cin, cout, stride, pool in shape:
            layers += [nn.Conv2d(cin, cout, 3, stride, padding=1, bias=False)]
            layers += [nn.BatchNorm2d(cout), nn.ReLU()] + ([nn.MaxPool2d(2)] if pool else [])
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.features(x), 1), 1))


def pick_images(labels: np.ndarray, share: float, among: np.ndarray | None = None) -> np.ndarray:
    """A mask over the digit images: ``share`` of each class (of those in ``among``), seeded
    by edgec's split seed (the same for every run and seed)."""
    rng = np.random.default_rng(SPLIT_SEED)
    among = np.ones(len(labels), dtype=bool) if among is None else among
    mask = np.zeros(len(labels), dtype=bool)
    for label in np.unique(labels[among]):
        members = np.flatnonzero(among & (labels == label))
        mask[rng.choice(members, max(1, round(share * len(members))), replace=False)] = True
    return mask


class ViewMasks(NamedTuple):
    """Which views (boolean masks over them) each part gets under ``--split images``."""

    teacher_train: np.ndarray
    student_train: np.ndarray
    validation: np.ndarray
    unlabelled: np.ndarray


def view_masks(y: np.ndarray, images: int, args: argparse.Namespace) -> ViewMasks:
    """Split ``hard_digits(copies + unlabeled)``'s views (copy-major: view ``k`` is of digit
    image ``k % images``, the first ``copies * images`` labelled) by digit image.

    Every view of an image falls on one side, so accuracy is measured on digits no model
    trained on. Under ``--student-share`` the students get the labelled views of that share of
    the training images, the teacher all of them, and the labelled views held back from the
    students join the unlabelled ones; unlabelled views of validation images are left out.
    """
    image_of = np.arange(len(y)) % images
    val_images = pick_images(y[:images], VALIDATION_SHARE)[image_of]
    student_images = pick_images(y[:images], args.student_share, among=~val_images[:images])
    labelled = np.arange(len(y)) < images * args.copies
    teacher_train = labelled & ~val_images
    student_train = labelled & student_images[image_of]
    unlabelled = ~labelled & ~val_images
    if args.student_share < 1:
        unlabelled |= teacher_train & ~student_train
    return ViewMasks(teacher_train, student_train, labelled & val_images, unlabelled)


def benchmark_data(
    x: np.ndarray, y: np.ndarray, args: argparse.Namespace
) -> tuple[Dataset, Dataset, np.ndarray | None]:
    """The teacher's data, the students' data and the unlabelled inputs (``None`` without
    ``--unlabeled``), from ``hard_digits(copies + unlabeled)``'s views.

    ``--split images`` (the default): by digit image (:func:`view_masks`); ``views``: the views
    split as ``edgec.data.split`` does (the earlier runs: a view's sibling of the same digit
    could be in training), the same data for teacher and students.
    """
    images = len(digits_arrays()[1])
    if args.split == "views":
        cut = images * args.copies
        teacher_data = split("hard-digits", x[:cut], y[:cut])
        return teacher_data, teacher_data, x[cut:] if args.unlabeled else None
    masks = view_masks(y, images, args)

    def dataset(train: np.ndarray) -> Dataset:
        val = masks.validation
        return Dataset("hard-digits", x[train], y[train], x[val], y[val], sha256="")

    extra = x[masks.unlabelled] if args.unlabeled else None
    return dataset(masks.teacher_train), dataset(masks.student_train), extra


def export_teacher(model: nn.Module, path: Path) -> Path:
    """The trained teacher as ONNX (batch 1, like a user's teacher), BatchNorm kept."""
    model.eval()
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (torch.zeros(1, 1, 32, 32),),
            buffer,
            input_names=["x"],
            output_names=["logits"],
            opset_version=17,
            dynamo=False,
        )
    path.write_bytes(buffer.getvalue())
    return path


@torch.no_grad()
def accuracy(model: nn.Module, data: Dataset) -> float:
    """Top-1 accuracy on the validation split."""
    model.eval()
    batches = [data.x_val[i : i + 256] for i in range(0, len(data.x_val), 256)]
    logits = torch.cat([model(torch.from_numpy(batch)) for batch in batches])
    return float((logits.argmax(1).numpy() == data.y_val).mean())


def _reinitialise(module: nn.Module, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    for layer in module.modules():
        if layer is not module and hasattr(layer, "reset_parameters"):
            layer.reset_parameters()
    return module


def teacher_settings(seed: int, args: argparse.Namespace) -> DistillSettings:
    """The teacher's recipe: from labels, on the students' views, with their schedule.

    A teacher trained without the views the students get is overtaken by students trained from
    labels on them, and the gap distillation should recover disappears. So the teacher gets the
    same views (``--augment``) and schedule: under ``--schedule plateau`` it trains until its
    holdout stalls for ``--teacher-patience`` epochs, then cools down, with a cap of
    ``--teacher-epochs`` (default: the students' ``--epochs``); under ``cosine`` it runs
    ``--teacher-epochs`` with no early stop. The best epoch on a holdout carved from the
    training part is kept (the validation labels judge accuracy only).

    The teachers are the benchmark's fixed input: their rate, patience and stall (each epoch's
    own holdout) stay the recipe they were first trained with while edgec's student defaults
    move (:data:`TEACHER_LR`, :data:`TEACHER_PATIENCE`).
    """
    epochs = args.teacher_epochs or args.epochs
    plateau = args.schedule == "plateau"
    patience = args.teacher_patience if plateau else epochs
    return DistillSettings(
        epochs=epochs, lr=args.teacher_lr, seed=seed, patience=patience, augment=args.augment,
        schedule=args.schedule, stall_window=1,
    )  # fmt: skip


def trained_teacher(seed: int, data: Dataset, args: argparse.Namespace) -> tuple[nn.Module, float]:
    """The seed's teacher and the seconds its training took (0 when ``--teacher-dir`` had it).

    With ``--teacher-dir``, teachers are kept there by seed and recipe, so a rerun (or a run
    with other student settings) reuses them; the recipe and data are in the file's name.
    """
    settings = teacher_settings(seed, args)
    with deterministic(seed):
        teacher = Teacher()
    stored = None
    if args.teacher_dir is not None:
        key = (
            f"seed{seed}-e{settings.epochs}-lr{settings.lr:g}-{settings.augment}"
            f"-copies{args.copies}-n{len(data.x_train)}"
        )
        if settings.schedule != "cosine":  # the cosine teachers kept their earlier names
            key += f"-{settings.schedule}-p{settings.patience}"
        if args.split == "images":  # the same number of training views as the views split
            key += "-images"
        stored = Path(args.teacher_dir) / f"teacher-{key}.pt"
        if stored.exists():
            teacher.load_state_dict(torch.load(stored))
            teacher.eval()
            timing = stored.with_suffix(".json")
            seconds = json.loads(timing.read_text())["seconds"] if timing.exists() else 0.0
            return teacher, seconds

    def progress(stats) -> None:
        if stats.epoch % 5 == 0 or stats.epoch == stats.epochs:
            print(
                f"seed {seed} teacher: epoch {stats.epoch}/{stats.epochs}, holdout "
                f"{100 * stats.holdout:.2f}%",
                flush=True,
            )

    report = train_student(teacher, data.x_train, None, data.y_train, settings, progress)
    if stored is not None:
        stored.parent.mkdir(parents=True, exist_ok=True)
        torch.save(teacher.state_dict(), stored)
        stored.with_suffix(".json").write_text(json.dumps({"seconds": report.seconds}))
    return teacher, report.seconds


def run_seed(
    seed: int,
    teacher_data: Dataset,
    data: Dataset,
    extra: np.ndarray | None,
    args: argparse.Namespace,
    work: Path,
    ratios: list[float] | None = None,
) -> dict:
    """Teacher (trained on ``teacher_data``) and the arms (on ``data``) at each ratio
    (``ratios``, else ``--ratios``) for one seed; accuracies and wall times."""
    ratios = args.ratios if ratios is None else ratios
    started = time.perf_counter()
    teacher, teacher_s = trained_teacher(seed, teacher_data, args)
    row: dict = {"seed": seed, "teacher": accuracy(teacher, data), "teacher_s": teacher_s}
    canonical = canonicalize(
        load_model(export_teacher(teacher, work / f"t{seed}-{ratios[0]:g}.onnx"), {}).proto
    )
    converted = onnx_to_torch(canonical)
    cache = TeacherCache(canonical)  # one session per seed; views repeat across arms
    # Every arm stops early as edgec does (agreement with the teacher and the KD loss on the
    # validation split; no labels), and trains on the same views for at most the same epochs.
    holdout = Holdout(data.x_val, cache(data.x_val))
    settings = DistillSettings(
        epochs=args.epochs,
        lr=args.lr,
        seed=seed,
        patience=args.patience,
        temperature=args.temperature,
        alpha=args.alpha,
        augment=args.augment,
        schedule=args.schedule,
        epoch_inputs=args.epoch_inputs,
        stall_window=args.stall_window,
    )
    arms = tuple(args.arms)
    for ratio in ratios:
        with deterministic(seed):
            pruned = prune_to_mac_ratio(converted, torch.zeros(1, 1, 32, 32), ratio)
        row[ratio] = {"mac_ratio": pruned.mac_ratio, "params": pruned.params_after}
        trained_kd = None  # pruned+KD's (state, report): the unlabeled arm's fallback
        for arm in arms:
            student = copy.deepcopy(pruned.module)
            if arm.startswith("scratch"):
                _reinitialise(student, seed + 1)
            kd = "KD" in arm
            with batchnorm_for_training(student):
                if arm == UNLABELED_ARM:
                    # As `edgec compile --unlabeled`: trained with and without them, the
                    # better on the holdout kept. Without them it is pruned+KD bit for bit
                    # (same start, seed and views), so that arm's student is passed in.
                    result = train_with_unlabeled(
                        student, data.x_train, cache, data.y_train, settings, extra,
                        holdout=holdout, without=trained_kd,
                    )  # fmt: skip
                    row[ratio][f"{arm}_decision"] = result.unlabeled
                else:
                    result = train_student(
                        student,
                        data.x_train,
                        cache if kd else None,
                        data.y_train,
                        settings,
                        holdout=holdout,
                    )
                if arm == "pruned+KD":
                    trained_kd = (copy.deepcopy(student.state_dict()), result)
            row[ratio][arm] = accuracy(student, data)
            row[ratio][f"{arm}_s"] = result.seconds
            row[ratio][f"{arm}_epochs"] = result.epochs_run
            row[ratio][f"{arm}_passes"] = result.passes
            row[ratio][f"{arm}_agreement"] = result.holdout
            print(
                f"seed {seed} ratio {ratio}: {arm:10s} {100 * row[ratio][arm]:.2f}% "
                f"({result.epochs_run} epochs, best {result.best_epoch}, agreement "
                f"{100 * result.holdout:.2f}%, {result.seconds:.0f} s"
                + (f", {result.unlabeled}" if arm == UNLABELED_ARM else "")
                + ")",
                flush=True,
            )
    row["seconds"] = time.perf_counter() - started
    row["teacher_views"] = cache.stats()
    print(f"seed {seed}: teacher {100 * row['teacher']:.2f}%, {row['seconds']:.0f} s", flush=True)
    if args.rows is not None:
        Path(args.rows).mkdir(parents=True, exist_ok=True)
        name = f"seed{seed}-" + "-".join(f"{r:g}" for r in ratios) + ".json"
        (Path(args.rows) / name).write_text(json.dumps(_jsonable(row), indent=1))
    return row


def merge_rows(parts: list[dict]) -> list[dict]:
    """One row per seed from rows of some of its ratios each (wall times and views added)."""
    rows: dict[int, dict] = {}
    for part in parts:
        row = rows.setdefault(part["seed"], {**part, "seconds": 0.0, "teacher_views": {}})
        for ratio in (k for k in part if isinstance(k, float)):
            row[ratio] = {**row.get(ratio, {}), **part[ratio]}
        row["seconds"] += part["seconds"]
        for key, value in part["teacher_views"].items():
            if isinstance(value, int) and not isinstance(value, bool):
                row["teacher_views"][key] = row["teacher_views"].get(key, 0) + value
    return [rows[seed] for seed in sorted(rows)]


def _jsonable(row: dict) -> dict:
    return {str(k): _jsonable(v) if isinstance(v, dict) else v for k, v in row.items()}


def load_rows(folder: Path, seeds: list[int], ratios: list[float]) -> list[dict]:
    """The rows ``--rows`` kept for ``seeds`` that finished every ratio of ``ratios``."""
    parts = []
    for path in sorted(folder.glob("seed*.json")):
        raw = json.loads(path.read_text())
        parts.append({_key(k): v for k, v in raw.items()})
    rows = merge_rows([p for p in parts if p["seed"] in seeds])
    return [row for row in rows if all(ratio in row for ratio in ratios)]


def _key(key: str) -> float | str:
    try:
        return float(key)
    except ValueError:
        return key


def _stderr(values: list[float]) -> float:
    """Standard error of the mean (0 for a single value)."""
    return statistics.stdev(values) / len(values) ** 0.5 if len(values) > 1 else 0.0


def _pct(values: list[float]) -> str:
    return f"{100 * statistics.fmean(values):.2f} ± {100 * _stderr(values):.2f}"


def _recovered_cell(rows: list[dict], ratio: float, arm: str) -> str:
    """The share of the pooled gap an arm recovers: mean(arm - scratch) / mean(teacher -
    scratch) over the seeds, with the paired difference arm - scratch (mean ± standard error).

    Pooled, not a mean of per-seed shares: a seed whose teacher is barely above its scratch
    student divides by almost nothing (shares of -600% and 320% were printed that way)."""
    if arm not in rows[0][ratio] or "scratch" not in rows[0][ratio]:
        return "—"
    gain = [r[ratio][arm] - r[ratio]["scratch"] for r in rows]
    gap = statistics.fmean(r["teacher"] - r[ratio]["scratch"] for r in rows)
    share = f"{100 * statistics.fmean(gain) / gap:.0f}%" if gap > 1e-9 else "no gap"
    return f"{share} ({100 * statistics.fmean(gain):+.2f} ± {100 * _stderr(gain):.2f} points)"


def _plateau_recipe(epochs: int, patience: int, window: int) -> str:
    """The students' plateau schedule in words; a patience that leaves no room for a stall
    before the cap makes it a fixed-length schedule (hold, then a linear decay by the cap)."""
    optimizer = torch.optim.SGD([torch.zeros(1)], lr=1.0)
    schedule = PlateauSchedule(optimizer, epochs, patience, 1, window)
    held = 0  # epochs before the cooldown, for a holdout that never improves after its first record
    while schedule.last_epoch is None:
        held += 1
        schedule.epoch_end(held, 0.0, 0.0)
    if not schedule.stalled:  # the cap, not a stall, started the cooldown
        return (
            f"edgec's plateau schedule with a patience ({patience} epochs) no stall can reach "
            f"before the cap (`--distill-patience {patience}`): the rate holds for {held} "
            f"epochs, then falls linearly to zero by epoch {epochs}"
        )
    return (
        f"edgec's plateau schedule: the rate holds until {patience} epochs pass in which "
        "neither agreement with the teacher nor the KD loss on the validation split improved "
        "(no labels), then falls linearly to zero over a quarter of the epochs so far, and "
        "training ends"
    )


def render(
    rows: list[dict],
    args: argparse.Namespace,
    teacher_data: Dataset,
    data: Dataset,
    extra: np.ndarray | None,
    total_s: float | None,
) -> str:
    """The RESULTS.md section (``teacher_data``: the teacher's; ``data``: the students';
    ``extra``: the unlabelled inputs)."""
    command = "python benchmarks/distill.py " + " ".join(sys.argv[1:])
    arms = [a for a in ALL_ARMS if a in rows[0][args.ratios[0]]]
    teacher = [r["teacher"] for r in rows]
    held_back = len(teacher_data.x_train) - len(data.x_train)
    n_unlabeled = 0 if extra is None else len(extra)
    lines = [
        BEGIN,
        "## Distillation: pruned+distilled students vs students trained from labels",
        "",
        f"- Date: {datetime.date.today().isoformat()}; machine: {platform.machine()}, "
        f"{torch.get_num_threads()} torch threads available, training fixed to "
        f"{DistillSettings().threads} thread (edgec's reproducible setting), seeds in "
        f"{args.jobs} process(es); torch {torch.__version__}; shared and noisy, so wall times "
        "are indicative.",
        f"- Command: `{command.strip()}`"
        + (
            " (renders the seeds kept by earlier runs with `--rows` and these settings)"
            if args.render_from
            else ""
        ),
        f"- Data: digits upsampled to 32x32, {args.copies} random affine views per image "
        f"(±20° rotation, 0.8-1.2 scale, ±0.2 shear, ±4 px shift) plus N(0, 0.15) noise: "
        f"{len(teacher_data.x_train)} train / {len(data.x_val)} validation images (stratified, "
        + (
            "split by digit image: every view of a digit on one side"
            if args.split == "images"
            else "split by view: a view's sibling of the same digit may be in training"
        )
        + ")"
        + (
            f"; the students get {len(data.x_train)} of the training views "
            f"(`--student-share {args.student_share:g}`, stratified, the same for every seed) "
            "with labels, the teacher all of them (as when a teacher trained elsewhere, on "
            "more data than the user has, is compiled with the user's data)"
            if held_back
            else ""
        )
        + (
            f"; `{UNLABELED_ARM}` also distils on {args.unlabeled} more such views per "
            + ("training image" if args.split == "images" else "image")
            + (f" and the {held_back} training views held back" if held_back else "")
            + f" ({n_unlabeled} inputs, no labels) and, as `edgec "
            "compile --unlabeled` does, keeps the student trained with them only if it agrees "
            "with the teacher on the validation split at least as well as the one trained "
            "without them (pruned+KD, the same training bit for bit), else that one."
            if args.unlabeled
            else "."
        ),
        "- Teacher: 4 conv-BN-ReLU layers (16-32-64-64, ~3 M MACs), GAP, Linear; trained from "
        f"labels on {'all the training' if held_back else 'the students'} views "
        f"(`augment={args.augment}`, the blended labels), "
        + (
            f"with the students' schedule, patience {teacher_settings(0, args).patience} "
            f"epochs, at most {teacher_settings(0, args).epochs} epochs"
            if args.schedule == "plateau"
            else f"for {teacher_settings(0, args).epochs} epochs, no early stop, the same "
            "cosine schedule"
        )
        + ", Adam, the best epoch on a 10% holdout carved from the training part kept"
        + (" (teachers trained once and kept with `--teacher-dir`)." if args.teacher_dir else "."),
        f"- Students (every arm alike): function matching — each batch becomes fresh views "
        f"(`augment={args.augment}`: random affine crop ±12.5% shift, ±15% zoom, ±15° "
        "rotation, ±0.15 shear, then mixup of half the samples), the teacher (ONNX Runtime, "
        "cached) labels the very views the KD arms see, the label arms learn the blended "
        f"labels; Adam (lr {args.lr:g}), batch 64, at most {args.epochs} epochs of at least "
        f"{args.epoch_inputs} inputs "
        f"({DistillSettings(epoch_inputs=args.epoch_inputs).passes(len(data.x_train))} "
        f"pass(es) over the {len(data.x_train)} labelled views), "
        + (
            _plateau_recipe(args.epochs, args.patience, args.stall_window)
            if args.schedule == "plateau"
            else f"cosine over the maximum, early stopping (patience {args.patience} epochs in "
            "which neither agreement with the teacher nor the KD loss on the validation split "
            "improved; no labels)"
        )
        + (
            f" (each measure the mean of the last {args.stall_window} epochs)"
            if args.stall_window > 1
            else ""
        )
        + "; the best epoch by agreement (then loss) kept; KD with "
        f"T = {args.temperature:g}, alpha = {args.alpha:g}; BatchNorm after each student conv "
        "while training (folded afterwards).",
        f"- Seeds: {', '.join(map(str, args.seeds))} ({len(rows)}); accuracies are mean ± "
        "standard error over seeds, top-1 on the validation split (labels used only here). "
        "Gap recovered (pooled over seeds): mean(student - scratch) / mean(teacher - "
        "scratch), with the paired difference student - scratch in points (mean ± standard "
        "error; a difference within about two standard errors of 0 is not one the seeds can "
        "tell apart).",
        "",
        f"Teacher: {_pct(teacher)} %.",
        "",
        "| MAC ratio (achieved) | "
        + " | ".join(arms)
        + " | gap recovered: "
        + " | gap recovered: ".join(a for a in arms if a != "scratch")
        + " |",
        "|---" * (1 + len(arms) + len(arms) - ("scratch" in arms)) + "|",
    ]
    for ratio in args.ratios:
        achieved = statistics.fmean(r[ratio]["mac_ratio"] for r in rows)
        cells = [
            _pct([r[ratio][arm] for r in rows]) if arm in rows[0][ratio] else "—" for arm in arms
        ]
        recovered = [_recovered_cell(rows, ratio, a) for a in arms if a != "scratch"]
        lines.append(f"| {ratio:g} ({achieved:.3f}) | " + " | ".join(cells + recovered) + " |")
    distances = "; ".join(
        f"{ratio:g}: "
        + ", ".join(
            f"{arm} {100 * statistics.fmean(r['teacher'] - r[ratio][arm] for r in rows):+.2f}"
            for arm in arms
            if arm in rows[0][ratio]
        )
        for ratio in args.ratios
    )
    lines += [
        "",
        f"Teacher minus student (points, mean over seeds; negative: above it): {distances}.",
    ]
    per_arm = {
        arm: (
            statistics.median(
                r[ratio][f"{arm}_s"] for r in rows for ratio in args.ratios if arm in r[ratio]
            ),
            statistics.median(
                r[ratio][f"{arm}_epochs"] for r in rows for ratio in args.ratios if arm in r[ratio]
            ),
        )
        for arm in arms
    }
    if UNLABELED_ARM in arms:
        decisions = "; ".join(
            f"{ratio:g}: "
            + ", ".join(
                f"seed {r['seed']} "
                + ("with" if (d := r[ratio][f"{UNLABELED_ARM}_decision"])["kept"] else "without")
                + f" ({100 * d['holdout_with']:.2f}% vs {100 * d['holdout_without']:.2f}%)"
                for r in rows
            )
            for ratio in args.ratios
            if UNLABELED_ARM in rows[0][ratio]
        )
        lines += [
            "",
            f"`{UNLABELED_ARM}` kept the student trained with or without them (validation "
            f"agreement with the teacher, with vs without): {decisions}.",
        ]
    views = rows[0]["teacher_views"]
    lines += [
        "",
        "Wall time: "
        + (f"{total_s / 60:.1f} min in all; " if total_s is not None else "")
        + "per seed "
        f"{statistics.median(r['seconds'] for r in rows):.0f} s (median) with teacher "
        + (
            f"training {teacher_s:.0f} s"
            if (teacher_s := statistics.median(r["teacher_s"] for r in rows))
            else "training not timed"
        )
        + (" (trained in an earlier run, kept in `--teacher-dir`)" if args.teacher_dir else "")
        + "; median training "
        "time per student: "
        + ", ".join(f"{arm} {s:.0f} s ({e:g} epochs)" for arm, (s, e) in per_arm.items())
        + f". Teacher views (seed {args.seeds[0]}): {views['views_computed']} computed, "
        f"{views['views_reused']} answered from the cache.",
        END,
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    """Run the benchmark and write its section."""
    defaults = DistillSettings()  # edgec's student settings, which the script measures
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.1, 0.3])
    parser.add_argument("--epochs", type=int, default=150, help="most epochs per student")
    parser.add_argument("--patience", type=int, default=defaults.patience, help="edgec's default")
    parser.add_argument(
        "--teacher-epochs",
        type=int,
        help="the teacher's most epochs (default: --epochs; under --schedule cosine no early stop)",
    )
    parser.add_argument(
        "--teacher-patience",
        type=int,
        default=TEACHER_PATIENCE,
        help="the teacher's patience under --schedule plateau (the kept teachers': "
        f"{TEACHER_PATIENCE})",
    )
    parser.add_argument(
        "--teacher-lr",
        type=float,
        default=TEACHER_LR,
        help=f"the teacher's learning rate (the kept teachers': {TEACHER_LR:g})",
    )
    parser.add_argument(
        "--teacher-dir", help="keep trained teachers here and reuse them (by seed and recipe)"
    )
    parser.add_argument(
        "--teachers-only", action="store_true", help="train (and keep) the teachers, then stop"
    )
    parser.add_argument(
        "--schedule",
        default="plateau",
        choices=["plateau", "cosine"],
        help="the students' learning-rate schedule (edgec's: plateau)",
    )
    parser.add_argument("--lr", type=float, default=defaults.lr, help="edgec's default")
    parser.add_argument(
        "--epoch-inputs",
        type=int,
        default=defaults.epoch_inputs,
        help="the fewest inputs a student's epoch trains on (edgec's default; 1: one pass)",
    )
    parser.add_argument(
        "--stall-window",
        type=int,
        default=defaults.stall_window,
        help="epochs whose mean holdout judges a student's stall (edgec's default; 1: each "
        "epoch's own, as before)",
    )
    parser.add_argument("--temperature", type=float, default=4.0)
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--augment", default="auto", choices=["auto", "none", "image"])
    parser.add_argument("--copies", type=int, default=2)
    parser.add_argument(
        "--student-share",
        type=float,
        default=1.0,
        help="the share of the training images whose views the students get with labels (the "
        "user's --data), stratified; the teacher trains on all of them, and the rest join the "
        "unlabelled views (default 1: the same data for teacher and students)",
    )
    parser.add_argument(
        "--split",
        default="images",
        choices=["images", "views"],
        help="validation split by digit image (every view of an image on one side) or by view "
        "(the earlier runs)",
    )
    parser.add_argument(
        "--unlabeled",
        type=int,
        default=2,
        help="extra affine views per image, unlabelled, for a pruned+KD+unlabeled arm (0: none)",
    )
    parser.add_argument(
        "--arms",
        nargs="+",
        choices=ALL_ARMS,
        help=f"default: {', '.join(ARMS)}, and {UNLABELED_ARM} with --unlabeled N > 0",
    )
    parser.add_argument(
        "--jobs", type=int, default=1, help="seeds run in parallel (one process each)"
    )
    parser.add_argument("--rows", help="keep each finished seed's results here (JSON)")
    parser.add_argument(
        "--render-from",
        help="write the section from the seeds kept in this --rows folder, training nothing",
    )
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    if args.arms is None:
        args.arms = list(ARMS) + ([UNLABELED_ARM] if args.unlabeled else [])
    if not args.unlabeled and UNLABELED_ARM in args.arms:
        parser.error(f"{UNLABELED_ARM} needs --unlabeled N > 0")
    if not 0 < args.student_share <= 1:
        parser.error("--student-share must be in (0, 1]")
    if args.student_share < 1 and args.split == "views":
        parser.error("--student-share needs --split images")
    if args.stall_window < 1:
        parser.error("--stall-window must be at least 1")
    for flag in ("patience", "teacher_patience"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be at least 1")
    for flag in ("lr", "teacher_lr"):
        if getattr(args, flag) <= 0:
            parser.error(f"--{flag.replace('_', '-')} must be positive")
    started = time.perf_counter()
    if args.render_from is not None:
        rows = load_rows(Path(args.render_from), args.seeds, args.ratios)
        args.seeds = [r["seed"] for r in rows]
        x, y = hard_digits(args.copies + args.unlabeled)
        teacher_data, data, extra = benchmark_data(x, y, args)
        section = render(rows, args, teacher_data, data, extra, None)
        print(section)
        if not args.no_write:
            write_section(section, BEGIN, END, RESULTS)
        return
    # The first ``copies`` views are the data (the generator draws them first, so they are the
    # same whatever --unlabeled is); the rest are the views nobody labelled.
    x, y = hard_digits(args.copies + args.unlabeled)
    teacher_data, data, extra = benchmark_data(x, y, args)
    if args.teachers_only:
        jobs = [(seed, teacher_data, args) for seed in args.seeds]
        if args.jobs > 1:
            with multiprocessing.get_context("spawn").Pool(min(args.jobs, len(jobs))) as pool:
                pool.starmap(trained_teacher, jobs)
        else:
            for job in jobs:
                trained_teacher(*job)
        return
    with tempfile.TemporaryDirectory() as work:
        # One job per seed and ratio, the first ratio's first: with --rows, what finished
        # is kept even if the run is stopped before the last ratio.
        jobs = [
            (seed, teacher_data, data, extra, args, Path(work), [ratio])
            for ratio in args.ratios
            for seed in args.seeds
        ]
        if args.jobs > 1:
            # Each seed is independent and single-threaded: one process per seed.
            context = multiprocessing.get_context("spawn")
            with context.Pool(min(args.jobs, len(jobs))) as pool:
                rows = merge_rows(pool.starmap(run_seed, jobs, chunksize=1))
        else:
            rows = merge_rows([run_seed(*job) for job in jobs])
    section = render(rows, args, teacher_data, data, extra, time.perf_counter() - started)
    print(section)
    if not args.no_write:
        write_section(section, BEGIN, END, RESULTS)


if __name__ == "__main__":
    main()
