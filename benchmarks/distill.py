"""Does distillation recover the teacher's accuracy? Pruned+distilled students vs scratch.

On a harder variant of scikit-learn's digits (upsampled to 32x32, random affine transforms and
pixel noise, so a teacher does not saturate at ~99%), for each seed:

1. train a CNN teacher from labels, export it to ONNX and canonicalise it as ``edgec compile``
   would, then convert it back with edgec's converter;
2. for each MAC ratio, prune the converted teacher with edgec (``prune_to_mac_ratio``) and train
   students of that same architecture on the same views for the same budget (``--arms``):

   * ``scratch``: random initialisation, labels only (cross-entropy) — the baseline;
   * ``scratch+KD``: random initialisation, distilled (Hinton et al.'s setting);
   * ``pruned``: the pruned teacher's weights, fine-tuned from labels only;
   * ``pruned+KD``: the pruned teacher's weights, distilled — what ``edgec compile`` does;
   * ``pruned+KD+unlabeled`` (with ``--unlabeled N``): pruned+KD that also distils on N more
     affine views per image that nobody labelled, as ``edgec compile --unlabeled`` does.

Students train by function matching, as in edgec: fresh views every batch, the teacher's logits
(ONNX Runtime on the exported teacher, one cached session per seed) on exactly those views, and
early stopping on agreement with the teacher on the validation split. Accuracy is top-1 on that
stratified validation split, whose labels nothing trains or stops on. The gap recovered by a
student is ``(student - scratch) / (teacher - scratch)``; Hinton et al. report ~90% on MNIST.

Usage::

    python benchmarks/distill.py [--seeds 0 1 2] [--ratios 0.1 0.3] [--epochs 40]
        [--patience 10] [--arms ...] [--unlabeled 2] [--jobs 3] [--copies 2] [--no-write]

Writes its section of ``benchmarks/RESULTS.md`` (between ``<!-- distill:begin -->`` and
``<!-- distill:end -->``) unless ``--no-write``.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import io
import multiprocessing
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

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
    batchnorm_for_training,
    deterministic,
    train_student,
)
from edgec.compiler.students.prune import prune_to_mac_ratio
from edgec.compiler.students.teacher_cache import TeacherCache
from edgec.data import Dataset, digits_arrays, split

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
BEGIN, END = "<!-- distill:begin -->", "<!-- distill:end -->"
ARMS = ("scratch", "scratch+KD", "pruned", "pruned+KD")
UNLABELED_ARM = "pruned+KD+unlabeled"


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


def run_seed(
    seed: int, data: Dataset, extra: np.ndarray | None, args: argparse.Namespace, work: Path
) -> dict:
    """Teacher and the arms at each ratio for one seed; accuracies and wall times."""
    started = time.perf_counter()
    # The teacher is trained as before this benchmark had function matching (same seeds, same
    # teacher): labels, no augmentation, 15 epochs, a holdout carved from the training part.
    teacher_settings = DistillSettings(
        epochs=args.teacher_epochs, lr=2e-3, seed=seed, augment="none"
    )
    with deterministic(seed):
        teacher = Teacher()
    report = train_student(teacher, data.x_train, None, data.y_train, teacher_settings)
    row: dict = {"teacher": accuracy(teacher, data), "teacher_s": report.seconds}
    canonical = canonicalize(load_model(export_teacher(teacher, work / f"t{seed}.onnx"), {}).proto)
    converted = onnx_to_torch(canonical)
    cache = TeacherCache(canonical)  # one session per seed; views repeat across arms
    # Every arm stops early on agreement with the teacher on the validation split (edgec's rule;
    # no labels), and trains on the same views for at most the same epochs.
    holdout = Holdout(data.x_val, cache(data.x_val))
    settings = DistillSettings(
        epochs=args.epochs,
        lr=args.lr,
        seed=seed,
        patience=args.patience,
        temperature=args.temperature,
        alpha=args.alpha,
        augment=args.augment,
    )
    arms = tuple(args.arms) + ((UNLABELED_ARM,) if extra is not None else ())
    for ratio in args.ratios:
        with deterministic(seed):
            pruned = prune_to_mac_ratio(converted, torch.zeros(1, 1, 32, 32), ratio)
        row[ratio] = {"mac_ratio": pruned.mac_ratio, "params": pruned.params_after}
        for arm in arms:
            student = copy.deepcopy(pruned.module)
            if arm.startswith("scratch"):
                _reinitialise(student, seed + 1)
            kd = "KD" in arm
            with batchnorm_for_training(student):
                result = train_student(
                    student,
                    data.x_train,
                    cache if kd else None,
                    data.y_train,
                    settings,
                    holdout=holdout,
                    unlabeled=extra if arm == UNLABELED_ARM else None,
                )
            row[ratio][arm] = accuracy(student, data)
            row[ratio][f"{arm}_s"] = result.seconds
            row[ratio][f"{arm}_epochs"] = result.epochs_run
            print(
                f"seed {seed} ratio {ratio}: {arm:10s} {100 * row[ratio][arm]:.2f}% "
                f"({result.epochs_run} epochs, best {result.best_epoch}, {result.seconds:.0f} s)",
                flush=True,
            )
    row["seconds"] = time.perf_counter() - started
    row["teacher_views"] = cache.stats()
    print(f"seed {seed}: teacher {100 * row['teacher']:.2f}%, {row['seconds']:.0f} s", flush=True)
    return row


def _pct(values: list[float]) -> str:
    mean = 100 * statistics.fmean(values)
    spread = 100 * (max(values) - min(values)) / 2
    return f"{mean:.2f} ± {spread:.2f}"


def _recovered(row: dict, ratio: float, arm: str) -> float | None:
    gap = row["teacher"] - row[ratio]["scratch"]
    if abs(gap) < 1e-9:
        return None
    return (row[ratio][arm] - row[ratio]["scratch"]) / gap


def _recovered_cell(rows: list[dict], ratio: float, arm: str) -> str:
    if arm not in rows[0][ratio] or "scratch" not in rows[0][ratio]:
        return "—"
    values = [v for r in rows if (v := _recovered(r, ratio, arm)) is not None]
    if not values:
        return "n/a (no gap)"
    listed = ", ".join(f"{100 * v:.0f}%" for v in values)
    return f"{100 * statistics.fmean(values):.0f}% (mean; {listed})"


def render(rows: list[dict], args: argparse.Namespace, data: Dataset, total_s: float) -> str:
    """The RESULTS.md section."""
    command = "python benchmarks/distill.py " + " ".join(sys.argv[1:])
    arms = [a for a in (*ARMS, UNLABELED_ARM) if a in rows[0][args.ratios[0]]]
    teacher = [r["teacher"] for r in rows]
    lines = [
        BEGIN,
        "## Distillation: pruned+distilled students vs students trained from labels",
        "",
        f"- Date: {datetime.date.today().isoformat()}; machine: {platform.machine()}, "
        f"{torch.get_num_threads()} torch threads available, training fixed to "
        f"{DistillSettings().threads} thread (edgec's reproducible setting), seeds in "
        f"{args.jobs} process(es); torch {torch.__version__}; shared and noisy, so wall times "
        "are indicative.",
        f"- Command: `{command.strip()}`",
        f"- Data: digits upsampled to 32x32, {args.copies} random affine views per image "
        f"(±20° rotation, 0.8-1.2 scale, ±0.2 shear, ±4 px shift) plus N(0, 0.15) noise: "
        f"{len(data.x_train)} train / {len(data.x_val)} validation images (stratified)"
        + (
            f"; `{UNLABELED_ARM}` also distils on {args.unlabeled} more such views per image "
            f"({args.unlabeled * len(digits_arrays()[1])} inputs, no labels)."
            if args.unlabeled
            else "."
        ),
        "- Teacher: 4 conv-BN-ReLU layers (16-32-64-64, ~3 M MACs), GAP, Linear; trained from "
        f"labels with the recipe of earlier runs ({args.teacher_epochs} epochs, no "
        "augmentation).",
        f"- Students (every arm alike): function matching — each batch becomes fresh views "
        f"(`augment={args.augment}`: random affine crop ±12.5% shift, ±15% zoom, ±15° "
        "rotation, ±0.15 shear, then mixup of half the samples), the teacher (ONNX Runtime, "
        "cached) labels the very views the KD arms see, the label arms learn the blended "
        f"labels; Adam (lr {args.lr:g}, cosine over the maximum), batch 64, at most "
        f"{args.epochs} epochs, early stopping (patience {args.patience}) on agreement with "
        f"the teacher on the validation split (no labels); KD with T = {args.temperature:g}, "
        f"alpha = {args.alpha:g}; BatchNorm after each student conv while training (folded "
        "afterwards).",
        f"- Seeds: {', '.join(map(str, args.seeds))}; accuracies are mean ± half the range "
        "over seeds, top-1 on the validation split (labels used only here). Gap recovered: "
        "(student - scratch) / (teacher - scratch), per seed.",
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
        cells = [_pct([r[ratio][arm] for r in rows]) for arm in arms]
        recovered = [_recovered_cell(rows, ratio, a) for a in arms if a != "scratch"]
        lines.append(f"| {ratio:g} ({achieved:.3f}) | " + " | ".join(cells + recovered) + " |")
    distances = "; ".join(
        f"{ratio:g}: "
        + ", ".join(
            f"{arm} {100 * statistics.fmean(r['teacher'] - r[ratio][arm] for r in rows):+.2f}"
            for arm in arms
        )
        for ratio in args.ratios
    )
    lines += [
        "",
        f"Teacher minus student (points, mean over seeds; negative: above it): {distances}.",
    ]
    per_arm = {
        arm: (
            statistics.median(r[ratio][f"{arm}_s"] for r in rows for ratio in args.ratios),
            statistics.median(r[ratio][f"{arm}_epochs"] for r in rows for ratio in args.ratios),
        )
        for arm in arms
    }
    views = rows[0]["teacher_views"]
    lines += [
        "",
        f"Wall time: {total_s / 60:.1f} min in all; per seed "
        f"{statistics.median(r['seconds'] for r in rows):.0f} s (median), of which teacher "
        f"training {statistics.median(r['teacher_s'] for r in rows):.0f} s; median training "
        "time per student: "
        + ", ".join(f"{arm} {s:.0f} s ({e:g} epochs)" for arm, (s, e) in per_arm.items())
        + f". Teacher views (seed {args.seeds[0]}): {views['views_computed']} computed, "
        f"{views['views_reused']} answered from the cache.",
        END,
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    """Run the benchmark and write its section."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.1, 0.3])
    parser.add_argument("--epochs", type=int, default=40, help="most epochs per student")
    parser.add_argument("--patience", type=int, default=10)
    parser.add_argument("--teacher-epochs", type=int, default=15, help=argparse.SUPPRESS)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--temperature", type=float, default=4.0)
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--augment", default="auto", choices=["auto", "none", "image"])
    parser.add_argument("--copies", type=int, default=2)
    parser.add_argument(
        "--unlabeled",
        type=int,
        default=2,
        help="extra affine views per image, unlabelled, for a pruned+KD+unlabeled arm (0: none)",
    )
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
    parser.add_argument(
        "--jobs", type=int, default=1, help="seeds run in parallel (one process each)"
    )
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    started = time.perf_counter()
    x, y = hard_digits(args.copies + args.unlabeled)
    # The first ``copies`` views are the data (same as before: the generator draws them first);
    # the rest are the views nobody labelled.
    cut = len(digits_arrays()[1]) * args.copies
    data = split("hard-digits", x[:cut], y[:cut])
    extra = x[cut:] if args.unlabeled else None
    with tempfile.TemporaryDirectory() as work:
        jobs = [(seed, data, extra, args, Path(work)) for seed in args.seeds]
        if args.jobs > 1:
            # Each seed is independent and single-threaded: one process per seed.
            context = multiprocessing.get_context("spawn")
            with context.Pool(min(args.jobs, len(jobs))) as pool:
                rows = pool.starmap(run_seed, jobs)
        else:
            rows = [run_seed(*job) for job in jobs]
    section = render(rows, args, data, time.perf_counter() - started)
    print(section)
    if not args.no_write:
        write_section(section, BEGIN, END, RESULTS)


if __name__ == "__main__":
    main()
