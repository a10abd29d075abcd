"""Per-stage precision: keep a stage FP32 or quantize it to INT8, by measurement or cost model.

``--precision auto`` picks the faster precision that passes the accuracy guard; ``int8``
forces INT8 (and fails when the guard cannot be met); ``fp32`` leaves the stage alone. For one
stage (:func:`decide_precision`):

1. A target whose ``precisions`` lack ``int8`` stays FP32; so does a stage without ``--data``
   under ``auto`` (``int8`` without data is refused earlier, by the driver).
2. The model is pre-processed and calibrated once (ONNX Runtime's tools, see
   :mod:`edgec.passes.quantize`) on ``--calib-samples`` inputs from the training split; on
   this machine a second time with cross-layer equalization, when that changes the model.
3. Candidate flavours are quantized from those ranges:

   * **this machine** (target ``host``, ONNX Runtime backend): u8s8 and s8s8 activations, each
     with per-channel and per-tensor weights (7-bit weights on x86 without VNNI), and the
     activation type the ISA prefers (u8s8 on x86) again with the model's stem kept in FP32
     (:func:`~edgec.passes.quantize.stem_nodes`), and, per-channel, with cross-layer
     equalization (the model pre-processed with
     :class:`~edgec.passes.equalize.EqualizeCrossLayerPass` and calibrated again; offered only
     when it changes the model) without and with bias correction
     (:func:`~edgec.passes.bias_correction.correct_biases`, on the calibration inputs). FP32
     and all candidates are timed
     interleaved in one process; each candidate is judged by the guard.
     The choice is the fastest candidate that passes, where candidates within 10% (or 20 us)
     of the fastest count as equally fast and the most accurate of them wins (ties: u8s8
     first) — but when the :func:`reference_flavour` (ONNX Runtime's best recipe: u8s8
     per-channel on x86) passes, only candidates that lose no more accuracy than it and run
     at least 0.95x its speed are eligible. When none passes, the :func:`rescue_flavours`
     (equalized, AdaRound weight rounding, bias correction: costly to quantize) join the
     candidates before the timing;
   * **other targets** (nothing can be measured): one flavour by the target's ISA and backend
     — s8s8 with symmetric activations for TensorRT, s8s8 on ARM (what ORT's ARM kernels
     prefer), u8s8 on x86 (VNNI/AVX2 integer instructions multiply u8 by s8), per-channel
     weights — and the roofline cost model decides whether INT8 is faster. It prices the
     INT8 graph that would ship (after any repair) with the call that gives the stage's
     manifest latency (:func:`~edgec.compiler.planning.cost_model.estimate_latency`), so the
     decision's numbers are the manifest's; the Q/DQ pairs the backend fuses into integer
     kernels cost nothing there, the layers kept in FP32 are priced as FP32. Before any
     calibration, a stage whose graph is not faster even priced fully quantized stays FP32
     (its decision then records that price for INT8).

4. If the chosen candidate fails the guard, :func:`edgec.compiler.int8.accuracy_guard.repair`
   keeps the worst-quantized layers in FP32 until it passes. If it cannot, ``--qat``
   (:mod:`edgec.compiler.int8.qat`) fine-tunes the stage with fake quantization and judges
   the re-quantized model with the same guard (``--qat on`` also where PTQ passed). If that
   fails too (or QAT is off), ``auto`` keeps the stage FP32 and ``int8`` raises
   :class:`~edgec.errors.GateFailedError` (exit 1) with the numbers.
5. Under ``auto`` INT8 must be at least ``MIN_SPEEDUP`` (10%) faster than FP32 — on this
   machine in a final head-to-head timing of the two (after any layers went back to FP32),
   elsewhere by the cost model — else the stage stays FP32.

The guard's reference is the stage's own FP32 model on the validation split (at most
``MAX_GUARD_SAMPLES`` inputs, a seeded subset when there are more), and its noise floor that
model on the same inputs with one 8-bit step of noise
(:func:`~edgec.compiler.int8.accuracy_guard.input_noise`).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from edgec.compiler.evaluate import predict
from edgec.compiler.int8.accuracy_guard import GuardVerdict, input_noise, judge, repair
from edgec.compiler.int8.qat import QatRequest, run_qat
from edgec.compiler.planning.cost_model import estimate_latency
from edgec.compiler.progress import Reporter
from edgec.data import Dataset
from edgec.errors import BadInputError, GateFailedError
from edgec.passes.calibration_table import CalibrationTable, tensorrt_version_number
from edgec.passes.quantize import Int8Flavour, calibrate, preprocess, quantize_model, stem_nodes
from edgec.targets.descriptor import Target
from edgec.targets.registry import backend_names, get_backend

logger = logging.getLogger(__name__)

# INT8 costs some accuracy, and on a shared machine two timings of the same model differ by a
# few percent: INT8 must win clearly to be worth shipping.
MIN_SPEEDUP = 1.10
SAME_SPEED = 1.10
SAME_SPEED_MS = 0.02
# The host's choice runs at least this fraction of the reference flavour's speed.
REFERENCE_SPEED = 0.95
MAX_GUARD_SAMPLES = 1000
DEFAULT_MIN_SQNR_DB = 10.0
_VNNI = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})


@dataclass(frozen=True)
class PrecisionOptions:
    """How to decide a stage's precision.

    Attributes:
        requested: ``auto``, ``int8`` or ``fp32``.
        calibration: ``minmax``, ``entropy`` or ``percentile``.
        calib_samples: Most calibration inputs (drawn from the training split).
        max_accuracy_drop: Largest accuracy drop (or disagreement on confident inputs) INT8
            may cause, in points.
        min_sqnr_db: Without labels, the logits' SQNR INT8 must reach.
        max_fp32_steps: Most activations the guard may keep in FP32 before giving up.
        compare_seconds: Time spent timing FP32 against the INT8 candidates on this machine.
        seed: Seed for the calibration and guard subsets.
        qat: ``--qat`` (:class:`~edgec.compiler.int8.qat.QatRequest`); ``None``: PTQ only.
    """

    requested: str = "auto"
    calibration: str = "minmax"
    calib_samples: int = 300
    max_accuracy_drop: float = 1.0
    min_sqnr_db: float = DEFAULT_MIN_SQNR_DB
    max_fp32_steps: int = 10
    compare_seconds: float = 3.0
    seed: int = 0
    qat: QatRequest | None = None


@dataclass
class PrecisionDecision:
    """A stage's precision and everything that led to it.

    Attributes:
        precision: ``fp32`` or ``int8``.
        model: The stage's model at that precision (Q/DQ ONNX for INT8).
        requested: What the user asked for.
        decided_by: ``requested``, ``target``, ``no-data``, ``measured-host``, ``cost-model``
            or ``accuracy-guard``.
        reason: One sentence saying why.
        flavour: The INT8 flavour (``None`` for FP32).
        fp32_layers: Nodes kept in FP32 inside an INT8 stage.
        calibration: The ranges (when calibration ran and INT8 was chosen).
        calibrated_model: The pre-processed FP32 model the ranges' tensor names refer to.
        verdict: The accuracy guard's verdict on the chosen INT8 model (or the failing one).
        latency_ms: Median latency per precision that was compared (``fp32``, ``int8``).
        latency_source: ``measured-host`` or ``estimated``.
        candidates: Per-flavour numbers (host only).
        repair_steps: What the guard kept in FP32, step by step.
        int8_model: The INT8 model that was considered, also when FP32 won (not shipped then;
            for benchmarks and debugging).
        int8_flavour: Its flavour.
        qat: The QAT attempt's record (``precision_decision.qat``), ``None`` when QAT was
            not considered.
    """

    precision: str
    model: onnx.ModelProto
    requested: str
    decided_by: str
    reason: str
    flavour: Int8Flavour | None = None
    fp32_layers: list[str] = field(default_factory=list)
    calibration: CalibrationTable | None = None
    calibrated_model: onnx.ModelProto | None = None
    verdict: GuardVerdict | None = None
    latency_ms: dict[str, float] = field(default_factory=dict)
    latency_source: str | None = None
    candidates: list[dict] = field(default_factory=list)
    repair_steps: list[dict] = field(default_factory=list)
    int8_model: onnx.ModelProto | None = None
    int8_flavour: Int8Flavour | None = None
    qat: dict | None = None

    def describe(self) -> str:
        """One line for the progress output: the choice, its reason and the latencies."""
        times = ", ".join(f"{k.upper()} {v:.3f} ms" for k, v in self.latency_ms.items())
        flavour = f" {self.flavour.name}" if self.flavour and self.precision == "int8" else ""
        layers = f", {len(self.fp32_layers)} layers kept FP32" if self.fp32_layers else ""
        return f"{self.precision.upper()}{flavour}{layers}: {self.reason}" + (
            f" [{times}, {self.latency_source}]" if times else ""
        )

    def manifest_fields(self) -> dict:
        """Fields for the stage's manifest entry (``calibration`` is added by the writer)."""
        return {
            "precision": self.precision,
            "int8_flavour": self.flavour.to_json() if self.flavour else None,
            "fp32_layers": list(self.fp32_layers),
            "accuracy_guard": self.verdict.to_json() if self.verdict else None,
            "precision_decision": {
                "requested": self.requested,
                "chosen": self.precision,
                "decided_by": self.decided_by,
                "reason": self.reason,
                "latency_ms": {k: round(v, 4) for k, v in self.latency_ms.items()},
                "latency_source": self.latency_source,
                "candidates": self.candidates,
                "guard_steps": self.repair_steps,
                "agreement": _agreement(self.verdict),
                "qat": self.qat,
            },
        }


def _agreement(verdict: GuardVerdict | None) -> dict | None:
    """The guard's agreement numbers for the decision record: on confident inputs (FP32 top-1
    >= 0.9), on moderately confident ones (>= 0.5) and FP32's own under 8-bit input noise."""
    if verdict is None:
        return None
    data = verdict.to_json()
    return {
        "confident": data["confident_agreement"],
        "moderate": data["moderate_agreement"],
        "moderate_samples": data["moderate_samples"],
        "noise_floor": data["noise_agreement"],
    }


def check_request(requested: str, target: Target, has_data: bool) -> None:
    """Refuse an INT8 request that cannot be honoured, before any work.

    Raises:
        BadInputError: ``int8`` on a target without INT8, or without ``--data``.
    """
    if requested != "int8":
        return
    if "int8" not in target.precisions:
        raise BadInputError(
            f"Target '{target.name}' does not run INT8 (its precisions are "
            f"{', '.join(target.precisions)}); use --precision fp32 or auto."
        )
    if not has_data:
        raise BadInputError(
            "--precision int8 needs --data to calibrate and check INT8 against FP32 "
            "(pass --data digits or an .npz with x), or use --precision auto."
        )


def rule_flavour(target: Target, backend: str) -> Int8Flavour:
    """The INT8 flavour for a target that cannot be measured, from its backend and ISA."""
    arch = target.cpu.arch.lower()
    features = set(target.cpu.isa_features)
    if backend in backend_names() and get_backend(backend).symmetric_int8_activations:
        return Int8Flavour("int8", per_channel=True, symmetric_activations=True)
    if arch.startswith(("aarch64", "arm")):
        return Int8Flavour("int8", per_channel=True)
    if arch in ("x86_64", "amd64", "x86"):
        return Int8Flavour("uint8", per_channel=True, reduce_range=not (features & _VNNI))
    return Int8Flavour("int8", per_channel=True)


def saturates_u8s8(target: Target) -> bool:
    """Whether the target's INT8 kernels saturate u8 x s8 products (x86 without VNNI)."""
    x86 = target.cpu.arch.lower() in ("x86_64", "amd64", "x86")
    return x86 and not (set(target.cpu.isa_features) & _VNNI)


def host_candidates(target: Target) -> list[Int8Flavour]:
    """Flavours worth timing on this machine: u8s8 and s8s8, per-channel and per-tensor, and
    the activation type this ISA's integer kernels prefer with its stem kept in FP32, then
    per-channel with cross-layer equalization, without and with bias correction."""
    x86 = target.cpu.arch.lower() in ("x86_64", "amd64", "x86")
    reduce = x86 and not (set(target.cpu.isa_features) & _VNNI)
    preferred = "uint8" if x86 else "int8"
    plain = [
        Int8Flavour(acts, per_channel=pc, reduce_range=reduce and acts == "uint8", fp32_stem=stem)
        for acts in ("uint8", "int8")
        for stem in (False, True)
        for pc in (True, False)
        if not stem or acts == preferred
    ]
    equalized = [
        Int8Flavour(
            preferred,
            per_channel=True,
            reduce_range=reduce and preferred == "uint8",
            equalize=True,
            bias_correction=corrected,
        )
        for corrected in (False, True)
    ]
    return plain + equalized


def reference_flavour(target: Target) -> Int8Flavour:
    """ONNX Runtime's own best recipe on this machine, the host search's yardstick: the
    activation type the ISA prefers (u8s8 on x86), per-channel weights, 7-bit weights on x86
    without VNNI — what ``quant_pre_process`` + ``quantize_static`` give with those options."""
    x86 = target.cpu.arch.lower() in ("x86_64", "amd64", "x86")
    reduce = x86 and not (set(target.cpu.isa_features) & _VNNI)
    return Int8Flavour("uint8" if x86 else "int8", per_channel=True, reduce_range=reduce)


def _lost(verdict: GuardVerdict) -> tuple[float, float]:
    """What a verdict lost, rounded so noise in the last digits does not decide: the accuracy
    (or confident-agreement) drop and the moderate-confidence drop, in points."""
    return (
        round(verdict.drop_points or 0.0, 3),
        round(verdict.moderate_drop_points or 0.0, 3),
    )


def rescue_flavours(target: Target, equalize: bool) -> list[Int8Flavour]:
    """The host flavours the search adds when no other candidate passes the guard (they cost
    more to quantize): the activation type this ISA prefers, per-channel, with cross-layer
    equalization (when ``equalize``: it changes the model), AdaRound weight rounding, then
    bias correction. None without torch (the ``train`` extra), which AdaRound learns with."""
    if importlib.util.find_spec("torch") is None:
        return []
    base = reference_flavour(target)
    return [dataclasses.replace(base, equalize=equalize, bias_correction=True, adaround=True)]


def _fp32(model, options, decided_by, reason, **extra) -> PrecisionDecision:
    logger.info("stage stays FP32: %s", reason)
    return PrecisionDecision("fp32", model, options.requested, decided_by, reason, **extra)


def _fp32_instead_of(
    choice: _Choice, model, options, decided_by: str, reason: str
) -> PrecisionDecision:
    """FP32 after INT8 was considered: the decision keeps the INT8 candidate's numbers."""
    return _fp32(model, options, decided_by, reason, **choice.recorded())


def _subset(x: np.ndarray, y: np.ndarray | None, limit: int, seed: int):
    if len(x) <= limit:
        return x, y
    keep = np.sort(np.random.default_rng(seed).permutation(len(x))[:limit])
    return x[keep], None if y is None else y[keep]


class _Workspace:
    """Models on disk and ONNX Runtime sessions on them, in one temporary directory."""

    def __init__(self, tmp: Path, target: Target):
        from edgec.targets.onnxruntime.backend import OrtRunner

        self._runner = OrtRunner
        self.tmp = tmp
        self.level = "all" if target.is_host else "extended"
        self.threads = target.cpu.cores if target.is_host else None
        # Another target's INT8 is judged by its own arithmetic: exact, unless it is an x86
        # CPU without VNNI, whose u8s8 kernels saturate (as this machine's may, or may not).
        self.exact_int8 = not target.is_host and not saturates_u8s8(target)
        self._count = 0

    def runner(self, model: onnx.ModelProto):
        self._count += 1
        path = self.tmp / f"m{self._count}.onnx"
        onnx.save_model(model, path)
        return self._runner(
            path, threads=self.threads, level=self.level, exact_int8=self.exact_int8
        )


def decide_precision(
    model: onnx.ModelProto,
    target: Target,
    backend: str,
    data: Dataset | None,
    options: PrecisionOptions,
    reporter: Reporter | None = None,
    stage: str = "stage",
) -> PrecisionDecision:
    """Decide one stage's precision (see the module docstring).

    Raises:
        BadInputError: Bad calibration data, or an INT8 request that cannot be honoured.
        GateFailedError: ``int8`` was requested and the accuracy guard cannot be met.
    """
    reporter = reporter or Reporter(quiet=True)
    if options.requested == "fp32":
        return _fp32(model, options, "requested", "--precision fp32")
    if "int8" not in target.precisions:
        check_request(options.requested, target, data is not None)
        return _fp32(
            model,
            options,
            "target",
            f"{target.name} lists no INT8 precision ({', '.join(target.precisions)})",
        )
    if data is None:
        check_request(options.requested, target, False)
        return _fp32(model, options, "no-data", "no --data to calibrate INT8 with")
    measured = target.is_host and backend == "onnxruntime"
    estimates = {}
    if not measured:
        # The FP32 graph priced fully quantized, known before calibrating: about the best INT8
        # can do (the Q/DQ graph adds its input's Q and output's DQ, and drops fused ReLUs).
        estimates = {p: estimate_latency(model, target, backend, p).p50 for p in ("fp32", "int8")}
        if options.requested == "auto" and estimates["int8"] * MIN_SPEEDUP > estimates["fp32"]:
            return _fp32(
                model,
                options,
                "cost-model",
                f"the cost model gives INT8 {estimates['int8']:.3f} ms vs FP32 "
                f"{estimates['fp32']:.3f} ms on {target.name}",
                latency_ms=estimates,
                latency_source="estimated",
            )
    with tempfile.TemporaryDirectory(prefix="edgec-int8-") as tmp:
        work = _Workspace(Path(tmp), target)
        with reporter.step(f"Calibrating '{stage}' ({options.calibration})"):
            pre = preprocess(model)
            x_cal, _ = _subset(data.x_train, None, options.calib_samples, options.seed)
            table = calibrate(pre, x_cal, options.calibration, data.sha256)
            # Per flavour.equalize: the pre-processed model and its ranges.
            prepared = {False: (pre, table)}
            if measured:
                equalized = preprocess(model, equalize=True)
                if equalized.SerializeToString() != pre.SerializeToString():
                    eq_table = calibrate(equalized, x_cal, options.calibration, data.sha256)
                    prepared[True] = (equalized, eq_table)
        x_val, y_val = _subset(data.x_val, data.y_val, MAX_GUARD_SAMPLES, options.seed)
        fp32_runner = work.runner(model)
        fp32_logits = predict(fp32_runner, x_val)
        # The guard's noise floor: FP32's own answers under one 8-bit step of input noise.
        fp32_noisy = predict(fp32_runner, input_noise(x_val, x_cal, options.seed))

        def judge_model(candidate: onnx.ModelProto) -> GuardVerdict:
            logits = predict(work.runner(candidate), x_val)
            return judge(
                fp32_logits,
                logits,
                y_val,
                options.max_accuracy_drop,
                options.min_sqnr_db,
                fp32_noisy,
            )

        if measured:
            with reporter.step(f"Timing FP32 against INT8 flavours of '{stage}' on this machine"):
                choice = _choose_on_host(
                    prepared,
                    x_cal,
                    target,
                    work,
                    fp32_runner,
                    x_val,
                    judge_model,
                    options,
                    reporter.update,
                )
        else:
            flavour = rule_flavour(target, backend)
            qdq = quantize_model(pre, table, flavour)
            latency = _estimates(model, qdq, target, backend)
            choice = _Choice(flavour, qdq, judge_model(qdq), latency, "estimated", [])
        result = choice
        # The chosen flavour's pre-processed model and ranges (equalized or not).
        pre, table = prepared[choice.flavour.equalize]
        slower = choice.latency["int8"] * MIN_SPEEDUP > choice.latency["fp32"]
        if options.requested == "auto" and slower:
            # Keeping layers in FP32 only makes INT8 slower still: no repair can help.
            return _fp32_instead_of(
                choice,
                model,
                options,
                "measured-host" if measured else "cost-model",
                f"INT8 is not at least {MIN_SPEEDUP:g}x faster than FP32 "
                f"({'measured on this machine' if measured else 'cost model'})",
            )

        def settled(qdq, verdict, excluded, steps) -> _Choice:
            """The chosen flavour with another INT8 model (repaired, or from QAT)."""
            return _Choice(
                choice.flavour,
                qdq,
                verdict,
                # The layers kept in FP32 change the graph the cost model prices.
                dict(choice.latency) if measured else _estimates(model, qdq, target, backend),
                choice.source,
                choice.candidates,
                excluded,
                steps,
            )

        if not choice.verdict.passed:
            with reporter.step(f"Accuracy guard: finding the layers INT8 breaks in '{stage}'"):
                repaired = repair(
                    pre,
                    choice.model,
                    choice.verdict,
                    table,
                    choice.flavour,
                    judge_model,
                    x_val,
                    options.max_fp32_steps,
                    samples=x_cal
                    if choice.flavour.bias_correction or choice.flavour.adaround
                    else None,
                )
            result = settled(repaired.model, repaired.verdict, repaired.excluded, repaired.steps)
        qat_verdict = None
        if options.qat is not None and options.qat.wanted(result.verdict.passed):
            # PTQ came first (cheaper); QAT starts again from its fully quantized model.
            attempt = run_qat(
                options.qat,
                pre,
                choice.model,
                result.verdict,
                table,
                choice.flavour,
                data,
                model,
                work.runner,
                judge_model,
                x_val,
                options.max_fp32_steps,
                x_cal,
                reporter,
                stage,
            )
            attempt.record["shipped"] = attempt.better_than(result.verdict, len(result.excluded))
            if attempt.record["shipped"]:
                pre, table = attempt.pre, attempt.calibration
                result = settled(attempt.model, attempt.verdict, attempt.excluded, attempt.steps)
            result.qat, qat_verdict = attempt.record, attempt.verdict
        if not result.verdict.passed:
            after_qat = f"; after QAT: {qat_verdict.summary()}" if qat_verdict else ""
            message = (
                f"INT8 for stage '{stage}' misses the accuracy guard even with "
                f"{len(result.excluded)} layers kept in FP32: {result.verdict.summary()}"
                f"{after_qat}"
            )
            if options.requested == "int8":
                raise GateFailedError(
                    f"{message}; raise --max-accuracy-drop, try another --calibration, or "
                    "use --precision auto to keep FP32."
                )
            return _fp32_instead_of(result, model, options, "accuracy-guard", message)
        if measured:
            # The verdict on speed comes from FP32 and the final INT8 model timed head to head
            # (two models share the time budget instead of five: steadier medians).
            stats = _time(
                work, {"fp32": fp32_runner, "int8": work.runner(result.model)}, x_val, options
            )
            result.latency = {k: v.p50 for k, v in stats.items()}
    decision = PrecisionDecision(
        "int8",
        result.model,
        options.requested,
        "measured-host" if measured else "cost-model",
        "",
        flavour=result.flavour,
        fp32_layers=[*(stem_nodes(pre) if result.flavour.fp32_stem else []), *result.excluded],
        calibration=table,
        calibrated_model=pre,
        **result.recorded(),
    )
    fp32_ms, int8_ms = result.latency["fp32"], result.latency["int8"]
    # Measured numbers stay out of the reason (they are in latency_ms), so two compiles that
    # decide alike record the same sentence.
    where = "measured on this machine" if measured else f"cost model for {target.name}"
    if options.requested == "auto" and int8_ms * MIN_SPEEDUP > fp32_ms:
        return _fp32_instead_of(
            result,
            model,
            options,
            decision.decided_by,
            f"INT8 is not at least {MIN_SPEEDUP:g}x faster than FP32 ({where})",
        )
    why = "--precision int8" if options.requested == "int8" else "faster than FP32"
    decision.reason = f"{why} ({where}); guard: {result.verdict.summary()}"
    logger.info("stage '%s' is INT8 (%s): %s", stage, result.flavour.name, decision.reason)
    return decision


def _estimates(
    fp32_model: onnx.ModelProto, int8_model: onnx.ModelProto, target: Target, backend: str
) -> dict[str, float]:
    """The cost model's p50 of each precision's graph: the call (and the graphs) the stage's
    manifest latency comes from, whichever precision ships."""
    return {
        "fp32": estimate_latency(fp32_model, target, backend, "fp32").p50,
        "int8": estimate_latency(int8_model, target, backend, "int8").p50,
    }


@dataclass
class _Choice:
    flavour: Int8Flavour
    model: onnx.ModelProto
    verdict: GuardVerdict
    latency: dict[str, float]
    source: str
    candidates: list[dict]
    excluded: list[str] = field(default_factory=list)
    steps: list[dict] = field(default_factory=list)
    qat: dict | None = None

    def recorded(self) -> dict:
        """What a decision records of the INT8 model considered, whichever precision wins."""
        return {
            "qat": self.qat,
            "verdict": self.verdict,
            "latency_ms": self.latency,
            "latency_source": self.source,
            "candidates": self.candidates,
            "repair_steps": self.steps,
            "int8_model": self.model,
            "int8_flavour": self.flavour,
        }


def _time(work: _Workspace, runners: dict, x_val: np.ndarray, options: PrecisionOptions):
    from edgec.targets.onnxruntime.timing import interleaved_latency

    first = next(iter(runners.values()))
    feeds = {first.input_names[0]: np.ascontiguousarray(x_val[:1])}
    return interleaved_latency(runners, feeds, seconds=options.compare_seconds)


def _choose_on_host(
    prepared: dict[bool, tuple[onnx.ModelProto, CalibrationTable]],
    x_cal: np.ndarray,
    target: Target,
    work: _Workspace,
    fp32_runner,
    x_val: np.ndarray,
    judge_model,
    options: PrecisionOptions,
    progress=None,
) -> _Choice:
    """Quantize every host candidate, time them against FP32, judge them; pick one.

    ``prepared`` maps ``flavour.equalize`` to the pre-processed model and its ranges; without
    an equalized one (equalization changed nothing) the equalizing flavours are left out.
    When no candidate passes the guard, the :func:`rescue_flavours` are quantized too (the
    rounding learned on ``x_cal``, ``progress`` told how far it is) before all are timed.
    """
    flavours = host_candidates(target)
    pre = prepared[False][0]
    if not stem_nodes(pre):  # nothing to keep in FP32: the stem flavours equal the others
        flavours = [f for f in flavours if not f.fp32_stem]
    flavours = [f for f in flavours if f.equalize in prepared]
    models = {
        f.name: (
            f,
            quantize_model(*prepared[f.equalize], f, samples=x_cal if f.bias_correction else None),
        )
        for f in flavours
    }
    runners = {"fp32": fp32_runner} | {name: work.runner(m) for name, (_, m) in models.items()}
    verdicts = {name: judge_model(m) for name, (_, m) in models.items()}
    if not any(v.passed for v in verdicts.values()):
        # The guard still fails: learn the weights' rounding (costly, so only now).
        for rescue in rescue_flavours(target, equalize=True in prepared):
            qdq = quantize_model(
                *prepared[rescue.equalize], rescue, samples=x_cal, progress=progress
            )
            models[rescue.name] = (rescue, qdq)
            runners[rescue.name] = work.runner(qdq)
            verdicts[rescue.name] = judge_model(qdq)
    stats = _time(work, runners, x_val, options)
    candidates = [
        {
            "flavour": name,
            "latency_ms": round(stats[name].p50, 4),
            "sqnr_db": round(verdicts[name].sqnr_db, 2),
            "drop_points": None
            if verdicts[name].drop_points is None
            else round(verdicts[name].drop_points, 3),
            "moderate_agreement": None
            if verdicts[name].moderate_agreement is None
            else round(verdicts[name].moderate_agreement, 4),
            "passed": verdicts[name].passed,
        }
        for name in models
    ]
    passing = [n for n in models if verdicts[n].passed] or list(models)
    reference = reference_flavour(target).name
    if reference in models and verdicts[reference].passed:
        # ONNX Runtime's own recipe passes: ship nothing less accurate than it, nor slower
        # than REFERENCE_SPEED of its speed.
        lost = _lost(verdicts[reference])
        limit = stats[reference].p50 / REFERENCE_SPEED
        passing = [
            n
            for n in passing
            if all(a <= b for a, b in zip(_lost(verdicts[n]), lost, strict=True))
            and stats[n].p50 <= limit
        ]
    fastest = min(stats[n].p50 for n in passing)
    # Differences under 10% or 20 us are this machine's noise (runs of a tiny model vary more
    # than that between two compiles), not a reason to pick a less accurate flavour.
    tied = [
        n for n in passing if stats[n].p50 <= max(fastest * SAME_SPEED, fastest + SAME_SPEED_MS)
    ]
    # Among equally fast candidates: least accuracy lost, then highest SQNR, then the order of
    # host_candidates (u8s8 first); rounding keeps noise in the last digits from deciding.
    best = min(
        tied,
        key=lambda n: (
            *_lost(verdicts[n]),
            -round(verdicts[n].sqnr_db, 1),
            list(models).index(n),
        ),
    )
    flavour, model = models[best]
    logger.info(
        "host INT8 candidates: %s; chose %s",
        ", ".join(f"{c['flavour']} {c['latency_ms']} ms {c['sqnr_db']} dB" for c in candidates),
        best,
    )
    latency = {"fp32": stats["fp32"].p50, "int8": stats[best].p50}
    return _Choice(flavour, model, verdicts[best], latency, "measured-host", candidates)


def tensorrt8_version(target: Target) -> str | None:
    """The target's TensorRT version when its toolchain is TensorRT 8.x, else ``None``."""
    version = target.toolchain.get("tensorrt")
    if not version:
        return None
    try:
        tensorrt_version_number(version)
    except BadInputError:
        return None
    return version


def write_calibration(
    decision: PrecisionDecision, stage_dir: Path, root: Path, target: Target
) -> dict | None:
    """Write an INT8 stage's calibration files; return the manifest's ``calibration`` field.

    ``calibration.json`` always; for TensorRT 8 toolchains also ``calibration.trt8.cache`` and
    ``model.fp32.onnx``, the FP32 graph whose tensor names the cache uses (TensorRT 8 builds
    INT8 engines from an FP32 network plus that cache).
    """
    if decision.precision != "int8" or decision.calibration is None:
        return None
    stage_dir.mkdir(parents=True, exist_ok=True)
    table = decision.calibration
    json_path = stage_dir / "calibration.json"
    json_path.write_text(table.dumps())
    field_value = {
        "method": table.method,
        "samples": table.samples,
        "tensors": len(table.ranges),
        "table": json_path.relative_to(root).as_posix(),
        "tensorrt_cache": None,
    }
    version = tensorrt8_version(target)
    if version is not None:
        cache = stage_dir / "calibration.trt8.cache"
        cache.write_text(table.tensorrt_cache(version))
        fp32_model = stage_dir / "model.fp32.onnx"
        onnx.save_model(decision.calibrated_model, fp32_model)
        field_value["tensorrt_cache"] = {
            "path": cache.relative_to(root).as_posix(),
            "tensorrt": version,
            "model": fp32_model.relative_to(root).as_posix(),
        }
    return field_value
