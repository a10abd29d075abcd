"""The INT8 accuracy guard: compare INT8 with FP32, find the layers INT8 breaks, keep them FP32.

**The verdict** (:func:`judge`) compares the INT8 model's outputs with the FP32 model's on the
validation split:

* with labels — the accuracy drop in points (``100 * (fp32 accuracy - int8 accuracy)``) must
  not exceed ``max_drop``;
* without labels — top-1 agreement is measured only on inputs where FP32 is *confident*
  (softmax top-1 probability >= ``CONFIDENT_PROBABILITY``): on a low-confidence input the top
  two logits are so close that noise below one 8-bit level flips the answer, in either
  direction, so plain agreement there measures noise, not damage. Disagreement on confident
  inputs (in points) must not exceed ``max_drop`` — when there are at least ``MIN_CONFIDENT``
  such inputs; with fewer it cannot be judged and only the next check applies. In addition the
  logits' SQNR (``10 log10(sum fp32^2 / sum (int8 - fp32)^2)``) must reach ``min_sqnr_db``,
  which catches broken quantization that agreement cannot see.

**Moderately confident inputs** (FP32 top-1 probability >= ``MODERATE_PROBABILITY``, 0.5),
with or without labels: an accuracy drop can hide flips that cancel out, and the very
confident inputs are the ones INT8 rarely flips, so a model that flips 5% of its moderately
confident answers would otherwise pass. Their disagreement (in points) must not exceed
``max_drop`` plus the FP32 model's own *noise floor*: the points it flips itself when its
inputs get noise of one 8-bit step of their range (:func:`input_noise`: uniform in
``[-step/2, step/2]``, the noise of storing the input in 8 bits). A model whose answers flip
under that much noise cannot be asked to keep them under INT8's much larger noise; a model
that does not flip under it must keep them within ``max_drop``. Judged only with at least
``MIN_CONFIDENT`` such inputs.

**The ranking** (:func:`rank_tensors`) takes the FP32 model's activations on a few validation
inputs (ONNX Runtime's ``qdq_loss_debug`` tools expose every intermediate tensor) and scores
each activation the Q/DQ model quantizes by the error of its own quantize/dequantize round
trip with that model's scale and zero point — FP32 values in, so an error upstream does not
make every tensor after it look broken. The score is the lower of the whole-tensor SQNR and
the median of the per-channel SQNRs: a channel with a huge outlier sets the INT8 scale for the
whole tensor and wipes out the other channels, yet dominates the whole-tensor signal power, so
only the per-channel view sees that damage.

**The repair** (:func:`repair`) keeps the worst tensor's producer and consumers in FP32 (no
node then asks for that tensor to be quantized), re-quantizes with the same calibration, ranks
again (keeping a node in FP32 can move quantization onto a neighbouring tensor) and judges
again, one tensor at a time, until the verdict passes, ``max_steps`` tensors are kept in FP32,
or ``PATIENCE`` steps in a row did not shrink the gap to passing by a tenth of where it started
(the damage is spread over the whole network, as in a model that amplifies noise everywhere:
keeping more layers in FP32 would only make INT8 pointless).
"""

from __future__ import annotations

import logging
import math
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from edgec.passes.calibration_table import CalibrationTable
from edgec.passes.quantize import ArrayCalibrationReader, Int8Flavour, quantize_model

logger = logging.getLogger(__name__)

CONFIDENT_PROBABILITY = 0.9
MODERATE_PROBABILITY = 0.5
MIN_CONFIDENT = 20
PATIENCE = 3  # repair steps without progress before the guard gives up
PROGRESS = 0.1  # progress: the gap to passing shrinks by a tenth of where it started
SQNR_CAP_DB = 200.0  # reported when INT8 reproduces FP32 exactly (JSON has no infinity)
_RANKING_BYTES = 256 << 20  # activations held in memory while ranking


@dataclass(frozen=True)
class GuardVerdict:
    """INT8 against FP32 on the validation split.

    Attributes:
        basis: ``accuracy`` (labels), ``confident-agreement+sqnr`` or ``sqnr`` (no labels, too
            few confident inputs to judge agreement).
        samples: Validation inputs compared.
        drop_points: Accuracy drop, or disagreement on confident inputs, in points
            (``None`` when it could not be judged).
        max_drop_points: The tolerance.
        fp32_accuracy: FP32 accuracy (labels only).
        int8_accuracy: INT8 accuracy (labels only).
        agreement: Top-1 agreement on all inputs (reported, not judged: noisy).
        confident_samples: Inputs where FP32 is confident.
        confident_agreement: Agreement on those (``None`` when there are none).
        sqnr_db: The logits' SQNR of INT8 against FP32.
        min_sqnr_db: The SQNR floor (applied without labels; ``None`` with labels).
        passed: The verdict.
        moderate_samples: Inputs where FP32's top-1 probability is at least
            ``MODERATE_PROBABILITY``.
        moderate_agreement: INT8's top-1 agreement with FP32 on those (``None``: none).
        noise_agreement: FP32's agreement with itself on those under one 8-bit step of input
            noise (``None``: not measured, floor 0).
        moderate_max_drop_points: The tolerance there: ``max_drop_points`` plus the points
            the noise flips (``None`` when too few inputs to judge).
    """

    basis: str
    samples: int
    drop_points: float | None
    max_drop_points: float
    fp32_accuracy: float | None
    int8_accuracy: float | None
    agreement: float
    confident_samples: int
    confident_agreement: float | None
    sqnr_db: float
    min_sqnr_db: float | None
    passed: bool
    moderate_samples: int = 0
    moderate_agreement: float | None = None
    noise_agreement: float | None = None
    moderate_max_drop_points: float | None = None

    @property
    def moderate_drop_points(self) -> float | None:
        """Disagreement on moderately confident inputs in points, ``None`` when not judged."""
        if self.moderate_max_drop_points is None or self.moderate_agreement is None:
            return None
        return 100.0 * (1.0 - self.moderate_agreement)

    def to_json(self) -> dict:
        """The manifest form (rounded)."""

        def r(value, digits=4):
            return None if value is None else round(float(value), digits)

        return {
            "basis": self.basis,
            "samples": self.samples,
            "drop_points": r(self.drop_points, 3),
            "max_drop_points": self.max_drop_points,
            "fp32_accuracy": r(self.fp32_accuracy, 6),
            "int8_accuracy": r(self.int8_accuracy, 6),
            "agreement": r(self.agreement, 6),
            "confident_samples": self.confident_samples,
            "confident_agreement": r(self.confident_agreement, 6),
            "sqnr_db": r(self.sqnr_db, 2),
            "min_sqnr_db": self.min_sqnr_db,
            "moderate_samples": self.moderate_samples,
            "moderate_agreement": r(self.moderate_agreement, 6),
            "noise_agreement": r(self.noise_agreement, 6),
            "moderate_max_drop_points": r(self.moderate_max_drop_points, 3),
            "passed": self.passed,
        }

    def summary(self) -> str:
        """One clause with the numbers, for logs and error messages."""
        parts = []
        if self.basis == "accuracy":
            parts.append(
                f"accuracy {100 * self.fp32_accuracy:.2f}% FP32 vs {100 * self.int8_accuracy:.2f}% "
                f"INT8 (drop {self.drop_points:.2f} points, allowed {self.max_drop_points:g})"
            )
        elif self.drop_points is not None:
            parts.append(
                f"{100 * self.confident_agreement:.2f}% agreement on {self.confident_samples} "
                f"confident inputs (drop {self.drop_points:.2f} points, allowed "
                f"{self.max_drop_points:g})"
            )
        else:
            parts.append(f"only {self.confident_samples} confident inputs, agreement not judged")
        if self.moderate_drop_points is not None:
            noise = (
                f"; FP32 under 8-bit input noise {100 * self.noise_agreement:.2f}%"
                if self.noise_agreement is not None
                else ""
            )
            parts.append(
                f"{100 * self.moderate_agreement:.2f}% agreement on {self.moderate_samples} "
                f"inputs with FP32 top-1 >= {MODERATE_PROBABILITY:g} (drop "
                f"{self.moderate_drop_points:.2f} points, allowed "
                f"{self.moderate_max_drop_points:.2f}{noise})"
            )
        floor = f" (floor {self.min_sqnr_db:g} dB)" if self.min_sqnr_db is not None else ""
        parts.append(f"logits SQNR {self.sqnr_db:.1f} dB{floor}")
        return ", ".join(parts)


def sqnr_db(reference: np.ndarray, test: np.ndarray) -> float:
    """``10 log10(sum reference^2 / sum (test - reference)^2)``, capped at ``SQNR_CAP_DB``."""
    reference = np.asarray(reference, dtype=np.float64)
    noise = float(np.sum((np.asarray(test, dtype=np.float64) - reference) ** 2))
    signal = float(np.sum(reference**2))
    if noise == 0.0:
        return SQNR_CAP_DB
    if signal == 0.0:
        return -SQNR_CAP_DB
    return min(10.0 * math.log10(signal / noise), SQNR_CAP_DB)


def _softmax_top(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    probs = np.exp(shifted)
    return probs.max(axis=1) / probs.sum(axis=1)


def input_noise(x: np.ndarray, reference: np.ndarray, seed: int = 0) -> np.ndarray:
    """``x`` plus uniform noise in ``[-step/2, step/2]``, ``step`` one 8-bit step of
    ``reference``'s range (``(max - min) / 255``): the noise of storing the input in 8 bits.
    Seeded; the guard's noise floor is the FP32 model's agreement with itself on it."""
    step = (float(np.max(reference)) - float(np.min(reference))) / 255.0
    noise = np.random.default_rng(seed).uniform(-step / 2, step / 2, x.shape)
    return (x + noise).astype(x.dtype)


def _top_probability(logits: np.ndarray) -> np.ndarray:
    if logits.shape[1] < 2:
        return np.zeros(len(logits))
    return _softmax_top(logits)


def judge(
    fp32_logits: np.ndarray,
    int8_logits: np.ndarray,
    labels: np.ndarray | None,
    max_drop_points: float,
    min_sqnr_db: float,
    fp32_noisy_logits: np.ndarray | None = None,
) -> GuardVerdict:
    """The guard's verdict on INT8 outputs against FP32 outputs (see the module docstring).

    ``fp32_noisy_logits`` are the FP32 model's outputs on the same inputs with
    :func:`input_noise`: the noise floor of the moderate-confidence check (without them the
    floor is 0).
    """
    fp32 = fp32_logits.reshape(len(fp32_logits), -1).astype(np.float64)
    int8 = int8_logits.reshape(len(int8_logits), -1).astype(np.float64)
    top_fp32, top_int8 = fp32.argmax(axis=1), int8.argmax(axis=1)
    same = top_fp32 == top_int8
    sqnr = sqnr_db(fp32, int8)
    probability = _top_probability(fp32)
    confident = probability >= CONFIDENT_PROBABILITY
    n_confident = int(confident.sum())
    confident_agreement = float(same[confident].mean()) if n_confident else None
    moderate = probability >= MODERATE_PROBABILITY
    n_moderate = int(moderate.sum())
    noise_agreement = None
    if fp32_noisy_logits is not None and n_moderate:
        noisy = fp32_noisy_logits.reshape(len(fp32_noisy_logits), -1).argmax(axis=1)
        noise_agreement = float((noisy == top_fp32)[moderate].mean())
    moderate_limit = None
    if n_moderate >= MIN_CONFIDENT:
        noise_points = 0.0 if noise_agreement is None else 100.0 * (1.0 - noise_agreement)
        moderate_limit = max_drop_points + noise_points
    common = {
        "samples": len(fp32),
        "max_drop_points": max_drop_points,
        "agreement": float(same.mean()),
        "confident_samples": n_confident,
        "confident_agreement": confident_agreement,
        "sqnr_db": sqnr,
        "moderate_samples": n_moderate,
        "moderate_agreement": float(same[moderate].mean()) if n_moderate else None,
        "noise_agreement": noise_agreement,
        "moderate_max_drop_points": moderate_limit,
    }
    moderate_ok = moderate_limit is None or (
        100.0 * (1.0 - common["moderate_agreement"]) <= moderate_limit + 1e-9
    )
    if labels is not None:
        acc_fp32 = float((top_fp32 == labels).mean())
        acc_int8 = float((top_int8 == labels).mean())
        drop = 100.0 * (acc_fp32 - acc_int8)
        return GuardVerdict(
            basis="accuracy",
            drop_points=drop,
            fp32_accuracy=acc_fp32,
            int8_accuracy=acc_int8,
            min_sqnr_db=None,
            passed=drop <= max_drop_points + 1e-9 and moderate_ok,
            **common,
        )
    drop = None
    if n_confident >= MIN_CONFIDENT:
        drop = 100.0 * (1.0 - confident_agreement)
    passed = (drop is None or drop <= max_drop_points + 1e-9) and sqnr >= min_sqnr_db
    passed = passed and moderate_ok
    return GuardVerdict(
        basis="confident-agreement+sqnr" if drop is not None else "sqnr",
        drop_points=drop,
        fp32_accuracy=None,
        int8_accuracy=None,
        min_sqnr_db=min_sqnr_db,
        passed=passed,
        **common,
    )


@dataclass(frozen=True)
class TensorError:
    """The quantization error one activation's Q/DQ step adds.

    Attributes:
        tensor: The activation's name in the FP32 (pre-processed) model.
        sqnr_db: min(whole-tensor SQNR, median per-channel SQNR) of its Q/DQ round trip.
    """

    tensor: str
    sqnr_db: float


def tensor_error_db(pre: np.ndarray, post: np.ndarray) -> float:
    """min(whole-tensor SQNR, median per-channel SQNR) of ``post`` against ``pre``.

    Both are ``[N, C, ...]``; channels whose signal power is below 1e-6 of the strongest are
    ignored (dead ReLU channels carry no information to lose).
    """
    whole = sqnr_db(pre, post)
    if pre.ndim < 2 or pre.shape[1] < 2:
        return whole
    channels = pre.shape[1]
    x = np.moveaxis(pre.astype(np.float64), 1, 0).reshape(channels, -1)
    y = np.moveaxis(post.astype(np.float64), 1, 0).reshape(channels, -1)
    power = (x**2).mean(axis=1)
    noise = ((x - y) ** 2).mean(axis=1)
    active = power > 1e-6 * power.max() if power.max() > 0 else np.zeros(channels, bool)
    if not active.any():
        return whole
    ratio = power[active] / np.maximum(noise[active], 1e-300)
    per_channel = float(np.median(10.0 * np.log10(ratio)))
    return min(whole, min(per_channel, SQNR_CAP_DB))


def _shapes(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    shapes = {}
    for value in [*model.graph.input, *model.graph.value_info, *model.graph.output]:
        dims = value.type.tensor_type.shape.dim
        if dims and all(d.HasField("dim_value") for d in dims):
            shapes[value.name] = tuple(d.dim_value for d in dims)
    return shapes


def _ranking_samples(fp32_model: onnx.ModelProto, available: int) -> int:
    per_sample = sum(int(np.prod(s)) for s in _shapes(fp32_model).values()) * 4
    return int(max(2, min(32, available, _RANKING_BYTES // max(per_sample, 1))))


def fp32_activations(fp32_model: onnx.ModelProto, samples: np.ndarray) -> dict[str, np.ndarray]:
    """Every float activation of ``fp32_model`` on a few samples, ``{name: [N, ...]}``.

    Uses ONNX Runtime's ``qdq_loss_debug`` tools (the model with every intermediate tensor
    added as an output); the number of samples is capped so they fit in ~256 MB.
    """
    from onnxruntime.quantization import qdq_loss_debug as debug

    n = _ranking_samples(fp32_model, len(samples))
    shapes = _shapes(fp32_model)
    with tempfile.TemporaryDirectory(prefix="edgec-activations-") as tmp:
        source, augmented = Path(tmp) / "fp32.onnx", Path(tmp) / "fp32_all_outputs.onnx"
        onnx.save_model(fp32_model, source)
        debug.modify_model_output_intermediate_tensors(str(source), str(augmented))
        collected = debug.collect_activations(
            str(augmented), ArrayCalibrationReader(_input_name(fp32_model), samples[:n])
        )
    activations = {}
    for name, batches in collected.items():
        stacked = np.stack([np.asarray(b) for b in batches])
        shape = shapes.get(name)
        if shape is not None and stacked[0].size == int(np.prod(shape)):
            # The debug outputs are flattened; restore [N * batch, C, ...].
            stacked = stacked.reshape(-1, *shape[1:])
        activations[name] = stacked
    return activations


def _constant(model: onnx.ModelProto, name: str) -> np.ndarray | None:
    for init in model.graph.initializer:
        if init.name == name:
            return numpy_helper.to_array(init)
    for node in model.graph.node:
        if node.op_type == "Constant" and node.output[0] == name:
            return numpy_helper.to_array(node.attribute[0].t)
    return None


def _fake_quantize(x: np.ndarray, scale: np.ndarray, zero_point: np.ndarray) -> np.ndarray:
    """QuantizeLinear then DequantizeLinear (per-tensor, round half to even, saturate)."""
    info = np.iinfo(zero_point.dtype)
    scale, zero = float(scale), float(zero_point)
    q = np.clip(np.rint(x.astype(np.float64) / scale) + zero, info.min, info.max)
    return (q - zero) * scale


def rank_tensors(
    qdq_model: onnx.ModelProto, activations: dict[str, np.ndarray]
) -> list[TensorError]:
    """The activations ``qdq_model`` quantizes, worst quantization error first.

    Each activation's error is its own: the FP32 model's values (``activations``, from
    :func:`fp32_activations`) through that tensor's QuantizeLinear/DequantizeLinear
    parameters in ``qdq_model``, so upstream errors do not contaminate downstream scores.
    Tensors with per-axis or non-constant parameters are not ranked.
    """
    ranking = []
    seen = set()
    for node in qdq_model.graph.node:
        if node.op_type != "QuantizeLinear" or node.input[0] in seen:
            continue
        tensor = node.input[0]
        values = activations.get(tensor)
        scale = _constant(qdq_model, node.input[1])
        zero = _constant(qdq_model, node.input[2]) if len(node.input) > 2 else None
        if values is None or scale is None or scale.size != 1:
            continue
        zero = np.zeros((), np.uint8) if zero is None else zero
        seen.add(tensor)
        ranking.append(
            TensorError(tensor, tensor_error_db(values, _fake_quantize(values, scale, zero)))
        )
    ranking.sort(key=lambda e: e.sqnr_db)
    logger.debug("worst quantized tensors: %s", ranking[:5])
    return ranking


def _input_name(model: onnx.ModelProto) -> str:
    initializers = {init.name for init in model.graph.initializer}
    return next(i.name for i in model.graph.input if i.name not in initializers)


def adjacent_nodes(model: onnx.ModelProto, tensor: str) -> list[str]:
    """Names of the nodes that produce or consume ``tensor``, in graph order."""
    return [n.name for n in model.graph.node if tensor in n.output or tensor in n.input]


@dataclass
class RepairResult:
    """What the repair loop ended with.

    Attributes:
        model: The last Q/DQ model tried.
        verdict: Its guard verdict.
        excluded: Node names kept in FP32, in graph order.
        steps: One record per tensor kept in FP32 (tensor, its error, nodes, the output's
            SQNR with them quantized and kept FP32, verdict after).
    """

    model: onnx.ModelProto
    verdict: GuardVerdict
    excluded: list[str] = field(default_factory=list)
    steps: list[dict] = field(default_factory=list)


def repair(
    fp32_model: onnx.ModelProto,
    qdq_model: onnx.ModelProto,
    verdict: GuardVerdict,
    calibration: CalibrationTable,
    flavour: Int8Flavour,
    judge_model: Callable[[onnx.ModelProto], GuardVerdict],
    ranking_samples: np.ndarray,
    max_steps: int,
    samples: np.ndarray | None = None,
) -> RepairResult:
    """Keep the worst-quantized tensors in FP32, one at a time, until the verdict passes.

    Args:
        fp32_model: The pre-processed FP32 model.
        qdq_model: Its full Q/DQ quantization.
        verdict: The guard verdict on ``qdq_model``.
        calibration: The ranges ``qdq_model`` was quantized with (reused, not recomputed).
        flavour: Its flavour.
        judge_model: Runs a Q/DQ model on the validation split and judges it.
        ranking_samples: Inputs whose FP32 activations :func:`rank_tensors` scores.
        max_steps: Most tensors to keep in FP32 before giving up.
        samples: Calibration inputs, for a flavour with ``bias_correction``.
    """
    result = RepairResult(model=qdq_model, verdict=verdict)
    if verdict.passed or max_steps <= 0:
        return result
    order = {n.name: i for i, n in enumerate(fp32_model.graph.node)}
    activations = fp32_activations(fp32_model, ranking_samples)
    excluded: set[str] = set()
    first_gap = best_gap = _gap(verdict)
    stalled = 0
    while len(result.steps) < max_steps and not result.verdict.passed:
        if stalled >= PATIENCE:
            logger.info(
                "accuracy guard: %d steps without progress; INT8 damage is spread out", PATIENCE
            )
            break
        # Ranked again after every step: keeping a node in FP32 can move quantization onto a
        # neighbouring tensor (e.g. a Conv output once the Relu after it is excluded).
        candidates = [
            (error, set(adjacent_nodes(fp32_model, error.tensor)) - excluded)
            for error in rank_tensors(result.model, activations)
        ]
        candidates = [(error, nodes) for error, nodes in candidates if nodes]
        if not candidates:
            break
        error, nodes = candidates[0]
        excluded |= nodes
        # AdaRound's rounding is the one learned for the first model (no time to learn more):
        # each step costs a quantization, not a new learning run, and the layers still
        # quantized keep the weights the first model had.
        model = quantize_model(
            fp32_model, calibration, flavour, sorted(excluded), samples=samples, adaround_seconds=0
        )
        before = result.verdict
        result.model, result.verdict = model, judge_model(model)
        result.excluded = sorted(excluded, key=order.__getitem__)
        result.steps.append(
            {
                "tensor": error.tensor,
                "tensor_sqnr_db": round(error.sqnr_db, 2),
                "nodes": sorted(nodes, key=order.__getitem__),
                # The error these nodes would add back if quantized: the output's SQNR with
                # them quantized (the step before) and kept FP32 (after).
                "output_sqnr_db_quantized": round(before.sqnr_db, 2),
                "output_sqnr_db_kept_fp32": round(result.verdict.sqnr_db, 2),
                "verdict_after": result.verdict.summary(),
            }
        )
        logger.info(
            "accuracy guard: kept '%s' (%.1f dB) in FP32 -> %s",
            error.tensor,
            error.sqnr_db,
            result.verdict.summary(),
        )
        gap = _gap(result.verdict)
        if gap < best_gap - PROGRESS * first_gap:
            best_gap, stalled = gap, 0
        else:
            stalled += 1
    return result


def _gap(verdict: GuardVerdict) -> float:
    """How far a verdict is from passing: points over the drop, plus dB under the floor."""
    gap = 0.0
    if verdict.drop_points is not None:
        gap += max(0.0, verdict.drop_points - verdict.max_drop_points)
    if verdict.min_sqnr_db is not None:
        gap += max(0.0, verdict.min_sqnr_db - verdict.sqnr_db)
    if verdict.moderate_drop_points is not None:
        gap += max(0.0, verdict.moderate_drop_points - verdict.moderate_max_drop_points)
    return gap
