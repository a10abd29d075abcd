"""Derive the students of a bundle: convert, prune, distil, export — or say why not.

:func:`derive_students` is what the compile driver calls. For each rung of the ladder
(:mod:`~edgec.compiler.students.ladder`) it prunes a copy of the converted teacher to the rung's
MAC ratio, distils it from the teacher by function matching (the teacher, through one ONNX
Runtime session and its cache, labels every augmented view of the training part of ``--data``
and of the ``--unlabeled`` inputs the student sees, so labels are optional; with them the
student is trained with and without them and the better kept), stops early judged against the
teacher on the validation split, exports the student to ONNX at the teacher's input
shape, checks the export against torch and canonicalises it like the teacher. The training time
of each student is printed (not recorded in the manifest, which stays reproducible: it records
epochs and optimiser steps instead).

Students are skipped — the teacher stays the only stage and the manifest's ``students`` section
says why — when they are not asked for (``--students none``), when there is no ``--data``, when
torch is not installed (with the command that installs it), when the teacher is not a
single-output classifier, or when the converter cannot represent one of its ops (named). A rung
whose pruning or export fails is listed under ``failed`` and the others go on. Too little data
to train on is bad input, raised before any training starts.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import onnx

from edgec.compiler.canonicalize import canonicalize
from edgec.compiler.planning.cost_model import total_macs
from edgec.compiler.progress import Reporter
from edgec.compiler.students.ladder import Ladder, plan_ladder
from edgec.config import CompileConfig
from edgec.data import Dataset
from edgec.errors import BadInputError
from edgec.targets.descriptor import Target

logger = logging.getLogger(__name__)

MIN_TRAIN_SAMPLES = 50
CHECK_SAMPLES = 8
TORCH_MISSING = (
    "students need the train extra (torch 2.13.0 CPU and torch-pruning), which is not "
    "installed: pip install -c constraints.txt -e '.[train]' (or pass --students none)"
)


@dataclass(frozen=True)
class Student:
    """A trained, exported student.

    Attributes:
        name: Stage name (``tiny``, ``small``, ...).
        model: Its canonical ONNX model (teacher's input/output names and input shape).
        details: Manifest fields for its stage (MAC ratio, pruning, distillation).
    """

    name: str
    model: onnx.ModelProto
    details: dict


@dataclass(frozen=True)
class StudentsResult:
    """The students, smallest first, and the manifest's ``students`` section.

    Attributes:
        students: The students that were derived.
        record: What was asked, the ladder, the settings, and why anything was skipped.
        training_seconds: Each derived student's training wall time (printed, and kept out of
            the manifest so that bundles stay reproducible).
    """

    students: tuple[Student, ...] = ()
    record: dict = field(default_factory=dict)
    training_seconds: dict[str, float] = field(default_factory=dict)


def derive_students(
    teacher: onnx.ModelProto,
    data: Dataset | None,
    target: Target,
    backend: str,
    precision: str,
    config: CompileConfig,
    reporter: Reporter,
) -> StudentsResult:
    """Derive the students ``config`` asks for from the canonical ``teacher``.

    Raises:
        BadInputError: The data is too small to train students on.
    """
    requested = config.students if isinstance(config.students, str) else list(config.students)
    record: dict = {"requested": requested, "skipped": None}
    unlabeled = _unlabeled(teacher, data, config)
    if config.students == "none":
        return _skip(record, "--students none", reporter)
    if data is None:
        return _skip(
            record,
            "no --data: students are trained on data (pass --data digits or an .npz with x)",
            reporter,
        )
    if len(data.x_train) < MIN_TRAIN_SAMPLES:
        raise BadInputError(
            f"Data '{data.name}' has {len(data.x_train)} training samples; students need at "
            f"least {MIN_TRAIN_SAMPLES} (pass more data, or --students none)."
        )
    try:
        import torch  # noqa: F401
        import torch_pruning  # noqa: F401
    except ImportError:
        return _skip(record, TORCH_MISSING, reporter)
    outputs = teacher.graph.output
    out_dims = outputs[0].type.tensor_type.shape.dim if len(outputs) == 1 else ()
    if len(outputs) != 1 or len(out_dims) != 2:
        return _skip(
            record,
            "students are derived for classifiers: one output of shape [batch, classes]",
            reporter,
        )
    ladder = plan_ladder(config.students, teacher, target, backend, precision, config.budget_ms)
    return _derive(teacher, data, unlabeled, ladder, config, reporter, record)


def distill_settings(config: CompileConfig):
    """The students' training settings from the compile options (``--distill-epochs``,
    ``--distill-patience``, ``--temperature``, ``--alpha``, ``--seed``); the rest are
    :class:`~edgec.compiler.students.distill.DistillSettings`' defaults."""
    from edgec.compiler.students.distill import DistillSettings

    patience = config.distill_patience
    return DistillSettings(
        epochs=config.distill_epochs,
        patience=DistillSettings.patience if patience is None else patience,
        temperature=config.temperature,
        alpha=config.alpha,
        seed=config.seed,
    )


def _unlabeled(teacher: onnx.ModelProto, data: Dataset | None, config: CompileConfig):
    """The ``--unlabeled`` inputs (checked against the teacher's input), or ``None``.

    Raises:
        BadInputError: No ``--data`` to judge the students with, or bad unlabeled inputs.
    """
    if config.unlabeled is None:
        return None
    if data is None:
        raise BadInputError(
            "--unlabeled adds inputs for distillation to --data's; pass --data too (its "
            "validation split judges the students)."
        )
    from edgec.unlabeled import load_unlabeled

    dims = teacher.graph.input[0].type.tensor_type.shape.dim
    return load_unlabeled(config.unlabeled, tuple(d.dim_value for d in dims[1:]))


def _skip(record: dict, reason: str, reporter: Reporter) -> StudentsResult:
    record["skipped"] = reason
    if reason != "--students none":
        reporter.note(f"no students: {reason}")
    return StudentsResult((), record)


def _derive(
    teacher: onnx.ModelProto,
    data: Dataset,
    unlabeled: np.ndarray | None,
    ladder: Ladder,
    config: CompileConfig,
    reporter: Reporter,
    record: dict,
) -> StudentsResult:
    import torch

    from edgec.compiler.students.augment import policy_for
    from edgec.compiler.students.convert import (
        UnsupportedModelError,
        check_against_onnxruntime,
        onnx_to_torch,
    )
    from edgec.compiler.students.distill import Holdout, deterministic
    from edgec.compiler.students.teacher_cache import TeacherCache

    settings = distill_settings(config)
    policy = policy_for(tuple(data.x_train.shape[1:]), settings.augment)
    record.update(
        ladder=ladder.to_json(),
        settings={
            **settings.to_json(),
            "views": policy.to_json(),
            "early_stopping": (
                "agreement with the teacher and the distillation loss on the validation "
                "split, each the mean of the last `stall_window` epochs: the cooldown "
                "starts when neither improved for `patience` epochs"
            ),
            "converter": "edgec.compiler.students.convert",
        },
        unlabeled=None if unlabeled is None else {"inputs": len(unlabeled)},
        failed=[],
    )
    check_x = data.x_val[:CHECK_SAMPLES]
    with reporter.step("Converting the teacher to torch for training"):
        try:
            module = onnx_to_torch(teacher)
            check_against_onnxruntime(module, teacher, check_x)
        except UnsupportedModelError as err:
            return _skip(record, f"the teacher cannot be trained in torch: {err}", reporter)
    # One teacher session for the whole run; every student's views go through its cache.
    cache = TeacherCache(teacher)
    extra = 0 if unlabeled is None else len(unlabeled)
    with reporter.step(f"Teacher logits on {len(data.x_train) + extra + len(data.x_val)} inputs"):
        logits = cache(data.x_train)
        val_logits = cache(data.x_val)
        unlabeled_ok = unlabeled is None or np.isfinite(cache(unlabeled)).all()
    if not (np.isfinite(logits).all() and np.isfinite(val_logits).all() and unlabeled_ok):
        return _skip(record, "the teacher gives NaN or infinite logits on the data", reporter)
    holdout = Holdout(data.x_val, val_logits)
    graph_input = teacher.graph.input[0]
    input_shape = tuple(d.dim_value for d in graph_input.type.tensor_type.shape.dim)
    example = torch.zeros(input_shape)
    teacher_macs = total_macs(teacher)
    students, seconds = [], {}
    for rung in ladder.rungs:
        with deterministic(config.seed, settings.threads):
            student = _derive_one(
                rung, module, example, data, (cache, holdout, unlabeled), settings, teacher,
                teacher_macs, reporter,
            )  # fmt: skip
        if isinstance(student, str):
            record["failed"].append({"name": rung.name, "reason": student})
            reporter.note(f"student '{rung.name}' skipped: {student}")
        else:
            students.append(student[0])
            seconds[rung.name] = student[1]
    record["teacher_views"] = cache.stats()
    return StudentsResult(tuple(students), record, seconds)


def _derive_one(rung, module, example, data, sources, settings, teacher, teacher_macs, reporter):
    """One student and its training time in seconds, or the reason it could not be made.

    ``sources`` is the teacher cache, the validation holdout and the unlabeled inputs.
    """
    from edgec.compiler.students.distill import (
        batchnorm_for_training,
        train_student,
        train_with_unlabeled,
    )
    from edgec.compiler.students.export import (
        ExportMismatchError,
        export_student,
        verify_export,
    )
    from edgec.compiler.students.prune import PruningError, prune_to_mac_ratio

    with reporter.step(f"Pruning '{rung.name}' to {100 * rung.mac_ratio:g}% of the MACs"):
        try:
            pruned = prune_to_mac_ratio(module, example, rung.mac_ratio)
        except PruningError as err:
            return str(err)
    cache, holdout, unlabeled = sources
    labels = data.y_train if data.has_labels else None
    bar = _progress_bar(reporter, rung.name, settings.epochs)
    with bar as progress, batchnorm_for_training(pruned.module) as student:
        if unlabeled is None:
            report = train_student(
                student, data.x_train, cache, labels, settings, progress, holdout
            )
        else:
            # Trained with and without them; the holdout keeps the better (never worse).
            report = train_with_unlabeled(
                student, data.x_train, cache, labels, settings, unlabeled, progress, holdout
            )
    reporter.note(
        f"'{rung.name}': trained in {report.seconds:.1f} s: {report.epochs_text()} "
        f"({report.steps} steps, {report.loss} on views), best validation "
        f"{report.metric} with the teacher {100 * report.holdout:.2f}% at epoch "
        f"{report.best_epoch}"
    )
    if (hint := report.cap_hint(rung.name)) is not None:
        reporter.note(hint)
    graph = teacher.graph
    opset = next((o.version for o in teacher.opset_import if o.domain in ("", "ai.onnx")), 17)
    with reporter.step(f"Exporting '{rung.name}' to ONNX"):
        proto = export_student(
            pruned.module, graph.input[0].name, tuple(example.shape), graph.output[0].name, opset
        )
        try:
            error = verify_export(proto, pruned.module, data.x_val[:CHECK_SAMPLES])
        except ExportMismatchError as err:
            return str(err)
        model = canonicalize(onnx.shape_inference.infer_shapes(proto, strict_mode=True))
    macs = total_macs(model)
    details = {
        "mac_ratio": {
            "target": rung.mac_ratio,
            "achieved": round(macs / teacher_macs, 4) if teacher_macs else None,
        },
        "pruning": {
            "channel_ratio": round(pruned.pruning_ratio, 4),
            "params": pruned.params_after,
            "teacher_params": pruned.params_before,
        },
        "distillation": {**report.to_json(), "export_error": float(f"{error:.3g}")},
    }
    return Student(rung.name, model, details), report.seconds


def teacher_logits(teacher: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    """The teacher's outputs on ``x`` through ONNX Runtime, batched where its graph allows."""
    from edgec.compiler.students.teacher_cache import TeacherCache

    return TeacherCache(teacher)(x)


@contextlib.contextmanager
def _progress_bar(reporter: Reporter, name: str, epochs: int) -> Iterator:
    """A rich progress bar (epoch, loss, holdout score) fed by the training callback; on a
    console that is not a terminal (CI logs) only the closing line is printed."""
    if reporter.quiet:
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    started = time.perf_counter()
    if not reporter.console.is_terminal:
        yield None
        reporter.console.print(
            f"[green]✓[/green] Distilling '{name}' "
            f"[dim]({time.perf_counter() - started:.1f} s)[/dim]"
        )
        return
    bar = Progress(
        TextColumn(f"Distilling '{name}'"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("epochs  loss {task.fields[loss]}  holdout {task.fields[score]}"),
        console=reporter.console,
        transient=True,
    )
    with bar:
        task = bar.add_task("distill", total=epochs, loss="—", score="—")

        def update(stats) -> None:
            bar.update(
                task,
                completed=stats.epoch,
                loss=f"{stats.loss:.4f}",
                score=f"{stats.metric} {100 * stats.holdout:.2f}%",
            )

        yield update
    reporter.console.print(
        f"[green]✓[/green] Distilling '{name}' [dim]({time.perf_counter() - started:.1f} s)[/dim]"
    )
