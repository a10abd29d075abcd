"""Distillation-aware QAT: when post-training INT8 misses the accuracy guard, train for it.

``--qat`` (:class:`QatRequest`) decides when the precision step
(:func:`~edgec.compiler.int8.precision.decide_precision`) fine-tunes a stage with fake
quantization before giving up on INT8:

* ``auto`` (the default) — only where post-training quantization (PTQ: the chosen flavour, then
  the guard's repair loop) misses the guard, and only when torch is installed (else a note
  says so and the stage stays FP32 as before). PTQ stays first because it is cheaper.
* ``on`` — for every stage INT8 is considered for, even where PTQ passes; the QAT model ships
  when it passes the guard and is at least as good (fewer layers kept in FP32, then a smaller
  accuracy drop, then a higher SQNR), unless no epoch improved on the start (then it is PTQ's
  model again). Needs torch.
* ``off`` — PTQ only.

:func:`run_qat` starts from PTQ's fully quantized model of the chosen flavour: it fine-tunes
the pre-processed FP32 model against it (:mod:`edgec.compiler.int8.qat_train`: fake
quantization where ORT put Q/DQ, ORT's arithmetic, the teacher's logits as the loss — the
compile's teacher for a student, the stage's own FP32 outputs for the teacher), re-quantizes
the result with edgec's quantizer in the same flavour (so the scheme — u8s8 or s8s8,
per-channel, 7-bit weights on x86 without VNNI — is PTQ's, and ORT runs it as INT8), and judges
it with the same guard; if it still misses, the guard's repair loop runs on it as on PTQ's
model. The manifest records the attempt in ``precision_decision.qat`` (:meth:`QatAttempt.record`).

This module needs no torch; the training is imported only when QAT runs.
"""

from __future__ import annotations

import importlib.util
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnx

from edgec.compiler.int8.accuracy_guard import GuardVerdict, RepairResult, repair
from edgec.compiler.progress import Reporter
from edgec.data import Dataset
from edgec.passes.calibration_table import CalibrationTable
from edgec.passes.quantize import Int8Flavour, quantize_model

logger = logging.getLogger(__name__)

TORCH_MISSING = (
    "QAT needs the train extra (torch), which is not installed: "
    "pip install -c constraints.txt -e '.[train]'"
)


def torch_available() -> bool:
    """Whether torch can be imported (without importing it)."""
    try:
        return importlib.util.find_spec("torch") is not None
    except (ImportError, ValueError):
        return False


@dataclass
class QatRequest:
    """What ``--qat`` asks for, and what QAT learns from.

    Attributes:
        mode: ``auto``, ``on`` or ``off``.
        teacher: The compile's FP32 teacher (its logits are the loss's target), or ``None``:
            the stage's own FP32 outputs are.
        epochs: Most epochs of fake-quantized training.
        temperature: Distillation temperature.
        alpha: Weight of the label loss (with labels).
        seed: Seed for shuffling and the holdout.
        max_seconds: Training stops after this much wall time (recorded as
            ``stopped_by_time``; such a run is not reproducible).
    """

    mode: str = "auto"
    teacher: onnx.ModelProto | None = None
    epochs: int = 8
    temperature: float = 4.0
    alpha: float = 0.5
    seed: int = 0
    max_seconds: float = 300.0
    _teacher_logits: dict = field(default_factory=dict, repr=False, compare=False)

    def wanted(self, ptq_passed: bool) -> bool:
        """Whether QAT should run after PTQ ended with ``ptq_passed``."""
        if self.mode == "off":
            return False
        return self.mode == "on" or not ptq_passed

    def teacher_logits(self, x: np.ndarray, runner: Callable) -> np.ndarray | None:
        """The teacher's logits on ``x`` (computed once per request and input array)."""
        if self.teacher is None:
            return None
        key = (id(x), x.shape)  # the compile's one training split, for every stage
        if key not in self._teacher_logits:
            from edgec.compiler.evaluate import predict

            self._teacher_logits[key] = predict(runner(self.teacher), x)
        return self._teacher_logits[key]


def _scores(verdict: GuardVerdict) -> dict:
    r = verdict.to_json()
    keys = ("passed", "drop_points", "fp32_accuracy", "int8_accuracy", "agreement", "sqnr_db")
    return {k: r[k] for k in keys}


@dataclass
class QatAttempt:
    """What QAT produced and the manifest's ``precision_decision.qat``.

    Attributes:
        record: The manifest record.
        model: The Q/DQ model after QAT (and any repair), or ``None`` when QAT did not run.
        verdict: Its guard verdict.
        pre: The fine-tuned pre-processed FP32 model (what the ranges' names refer to).
        calibration: The ranges it was quantized with (learned in training).
        repaired: The guard's repair on the QAT model, when it ran.
        seconds: Wall time (reported, kept out of the manifest: bundles stay reproducible).
    """

    record: dict
    model: onnx.ModelProto | None = None
    verdict: GuardVerdict | None = None
    pre: onnx.ModelProto | None = None
    calibration: CalibrationTable | None = None
    repaired: RepairResult | None = None
    seconds: float = 0.0

    @property
    def excluded(self) -> list[str]:
        """Nodes the repair kept in FP32 in the QAT model."""
        return list(self.repaired.excluded) if self.repaired else []

    @property
    def steps(self) -> list[dict]:
        """The repair's steps on the QAT model."""
        return list(self.repaired.steps) if self.repaired else []

    def better_than(self, verdict: GuardVerdict, excluded: int) -> bool:
        """Whether the QAT model should ship instead of PTQ's (``verdict`` with ``excluded``
        layers in FP32)."""
        if self.model is None or not self.verdict.passed:
            return False
        if self.record.get("best_epoch") == 0:  # no epoch beat the start: PTQ's weights again
            return False
        if not verdict.passed:
            return True

        def key(v: GuardVerdict, n: int) -> tuple:
            return (n, round(v.drop_points or 0.0, 3), -round(v.sqnr_db, 1))

        return key(self.verdict, len(self.excluded)) <= key(verdict, excluded)


def run_qat(
    request: QatRequest,
    pre: onnx.ModelProto,
    ptq_model: onnx.ModelProto,
    ptq_verdict: GuardVerdict,
    table: CalibrationTable,
    flavour: Int8Flavour,
    data: Dataset,
    fp32_model: onnx.ModelProto,
    runner: Callable,
    judge_model: Callable[[onnx.ModelProto], GuardVerdict],
    x_val: np.ndarray,
    max_fp32_steps: int,
    x_cal: np.ndarray,
    reporter: Reporter,
    stage: str,
) -> QatAttempt:
    """Fine-tune ``pre`` with fake quantization, re-quantize it and judge it (module docstring).

    Args:
        request: The ``--qat`` request.
        pre: The pre-processed FP32 model PTQ quantized.
        ptq_model: PTQ's fully quantized model of the chosen flavour.
        ptq_verdict: The guard's verdict on PTQ's outcome (before QAT).
        table: The ranges PTQ used.
        flavour: The chosen flavour.
        data: The ``--data`` set (training inputs and labels).
        fp32_model: The stage's FP32 model (the guard's reference).
        runner: Makes an ONNX Runtime runner for a model.
        judge_model: Runs a Q/DQ model on the validation split and judges it.
        x_val: The guard's validation inputs (the repair ranks activations on them).
        max_fp32_steps: Most layers the repair may keep in FP32.
        x_cal: Calibration inputs (for a bias-correcting flavour).
        reporter: Progress output.
        stage: The stage's name.
    """
    record: dict = {
        "mode": request.mode,
        "ran": False,
        "reason": None,
        "before": _scores(ptq_verdict),
    }
    if not torch_available():
        record["reason"] = TORCH_MISSING
        reporter.note(f"'{stage}': no QAT: {TORCH_MISSING}")
        return QatAttempt(record)
    from edgec.compiler.evaluate import predict
    from edgec.compiler.int8.qat_train import FinetuneSettings, QatUnavailable, finetune

    settings = FinetuneSettings(
        epochs=request.epochs,
        temperature=request.temperature,
        alpha=request.alpha,
        seed=request.seed,
        max_seconds=request.max_seconds,
    )
    started = time.perf_counter()
    x_train = data.x_train
    fp32_logits = predict(runner(fp32_model), x_train)
    target = request.teacher_logits(x_train, runner)
    source = "teacher" if target is not None else "stage-fp32"
    if (
        target is None
        or target.reshape(len(x_train), -1).shape != fp32_logits.reshape(len(x_train), -1).shape
    ):
        target, source = fp32_logits, "stage-fp32"
    labels = data.y_train if data.has_labels else None
    try:
        with _Progress(reporter, stage, settings.epochs) as progress:
            tuned = finetune(
                pre,
                ptq_model,
                table,
                flavour,
                x_train,
                target,
                fp32_logits,
                labels,
                settings,
                progress,
            )
    except (QatUnavailable, RuntimeError) as err:  # RuntimeError: torch could not run it
        record["reason"] = str(err).strip().splitlines()[0]
        reporter.note(f"'{stage}': no QAT: {err}")
        return QatAttempt(record)
    samples = x_cal if flavour.bias_correction else None
    with reporter.step(f"Quantizing the QAT model of '{stage}' ({flavour.name})"):
        model = quantize_model(tuned.model, tuned.calibration, flavour, samples=samples)
        verdict = judge_model(model)
    repaired = None
    if not verdict.passed and max_fp32_steps > 0:
        with reporter.step(f"Accuracy guard: finding the layers INT8 breaks in QAT '{stage}'"):
            repaired = repair(
                tuned.model,
                model,
                verdict,
                tuned.calibration,
                flavour,
                judge_model,
                x_val,
                max_fp32_steps,
                samples=samples,
            )
        model, verdict = repaired.model, repaired.verdict
    seconds = time.perf_counter() - started
    record.update(
        ran=True,
        loss_target=source,
        settings=settings.to_json(),
        epochs_run=tuned.epochs_run,
        best_epoch=tuned.best_epoch,
        stopped_by_time=tuned.stopped_by_time,
        holdout_metric=tuned.metric,
        holdout_before=round(tuned.holdout_before, 6),
        holdout_after=round(tuned.holdout, 6),
        fake_quantized={"activations": tuned.quantized_tensors, "weights": tuned.quantized_weights},
        frozen_parameters=len(tuned.frozen),
        train_steps=tuned.steps,
        after=_scores(verdict),
        fp32_layers=list(repaired.excluded) if repaired else [],
    )
    reporter.note(
        f"'{stage}': QAT {tuned.epochs_run} epochs ({seconds:.1f} s): guard "
        f"{'passed' if verdict.passed else 'missed'}: {verdict.summary()}"
    )
    return QatAttempt(
        record, model, verdict, tuned.model, tuned.calibration, repaired, seconds=seconds
    )


class _Progress:
    """A rich progress bar over QAT epochs (nothing when quiet or not on a terminal)."""

    def __init__(self, reporter: Reporter, stage: str, epochs: int):
        self.reporter, self.stage, self.epochs = reporter, stage, epochs
        self._bar = None
        self._started = 0.0

    def __enter__(self):
        self._started = time.perf_counter()
        console = self.reporter.console
        if self.reporter.quiet or not console.is_terminal:
            return None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        self._bar = Progress(
            TextColumn(f"QAT '{self.stage}'"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("epochs  loss {task.fields[loss]}  holdout {task.fields[score]}"),
            console=console,
            transient=True,
        )
        self._bar.__enter__()
        task = self._bar.add_task("qat", total=self.epochs, loss="—", score="—")

        def update(epoch: int, epochs: int, loss: float, score: float) -> None:
            self._bar.update(task, completed=epoch, loss=f"{loss:.4f}", score=f"{100 * score:.2f}%")

        return update

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)
        if not self.reporter.quiet and exc[0] is None:
            self.reporter.console.print(
                f"[green]✓[/green] QAT of '{self.stage}' "
                f"[dim]({time.perf_counter() - self._started:.1f} s)[/dim]"
            )
