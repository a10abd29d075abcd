"""AdaRound: learn whether each INT8 weight rounds up or down (Nagel et al. 2020).

Round-to-nearest is optimal per weight but not per layer: the rounding errors of a layer's
weights add up in its output, and choosing up or down per weight so that they cancel on real
inputs gives a smaller output error. AdaRound ("Up or Down? Adaptive Rounding for Post-Training
Quantization") learns that choice layer by layer on calibration inputs, without labels:

* the soft weight is ``s * clip(floor(W / s) + h(V), qmin, qmax)``, ``s`` the weight scale ONNX
  Runtime's quantizer chose (per channel or per tensor; unchanged here), ``h(V) =
  clip(sigmoid(V) * (zeta - gamma) + gamma, 0, 1)`` the rectified sigmoid (``zeta = 1.1``,
  ``gamma = -0.1``), ``V`` initialised so ``h(V)`` is the fractional part (the soft weight
  starts at ``W``);
* the loss is the layer's output error against the FP32 model's output of the same layer
  (after the Relu or Clip that follows it, which ONNX Runtime fuses: errors the activation
  cuts away do not count), relative to the FP32 output's power, plus
  ``lam * mean(1 - |2 h(V) - 1| ** beta)``, the regulariser that drives every ``h(V)`` to 0 or
  1, with ``beta`` annealed from 20 to 2 after a warm-up of a fifth of the steps without it;
* the layer's input is what the Q/DQ model feeds it (earlier layers already rounded this way,
  their activations quantized), so each layer also learns to absorb the error upstream; the
  target is the FP32 model's output on the same calibration inputs;
* the learned choice (``h(V) >= 0.5``) is kept only where it reconstructs the layer's output
  on the calibration inputs better than round-to-nearest; else the layer keeps its weights.

What is rewritten: every ``Conv`` (1-D or 2-D, explicit pads) and ``Gemm`` (``transA = 0``)
whose weight is a DequantizeLinear of an int8 initializer with zero point 0 (ONNX Runtime's
symmetric weights), and whose node name is in the FP32 model: the int8 initializer gets the
learned values. Nothing else changes (scales, zero points, biases, the graph), so the model
runs exactly as fast as before. Skipped layers are logged at ``debug``.

Bounded work: at most :data:`MAX_SAMPLES` calibration inputs (fewer when a layer's input and
output would take more than ~256 MB), at most ``steps`` optimiser steps per layer (Adam,
batches of 32), and ``seconds`` in all, shared evenly by the layers still to do: the number of
steps of a layer is fitted to its share after timing its first 10 (at least 20); once the
time is spent (collecting a big model's layer inputs counts too) the layers left keep
round-to-nearest. The layers' inputs and targets are collected a part of each model at a time
(:class:`_LayerData`), not by runs from the input up to every layer. Seeded
(``seed``): the same model, samples and seed give the same weights. ``progress`` gets a short
line per layer and every 50 steps, for a progress bar.

Layers learned once are cached in the process (keyed by the layer's weights, scale, node name,
the samples and the seed): the accuracy guard re-quantizes a model many times with different
layers kept in FP32, and each such model reuses the rounding learned in the first one (with
``seconds=0``: nothing new is learned, so a layer the first model had no time for keeps
round-to-nearest in all of them, and a repair step costs no learning).
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgec.passes.calibration_data import check_calibration_samples
from edgec.passes.layer_io import StepwiseRun, initializers, producers

logger = logging.getLogger(__name__)

#: Calibration inputs used (the first ones).
MAX_SAMPLES = 256
#: Default optimiser steps per layer and time for all layers.
DEFAULT_STEPS = 800
DEFAULT_SECONDS = 120.0
_MIN_STEPS = 20
_BATCH = 32
_PROBE = 4  # samples that size a layer's tensors before the rest are collected
_BYTES = 256 << 20
_ZETA, _GAMMA = 1.1, -0.1
_CACHE: OrderedDict[str, np.ndarray] = OrderedDict()
_CACHE_SIZE = 512


@dataclass(frozen=True)
class RoundedLayer:
    """What rounding one layer did.

    Attributes:
        node: The Conv/Gemm node name.
        nearest_error: The layer's output error with round-to-nearest weights, relative to
            the FP32 output's power, on the calibration inputs.
        learned_error: The same with the learned rounding (the one kept when lower).
        flipped: Weights that round the other way than to nearest (0 when not kept).
        steps: Optimiser steps taken (0 when cached).
    """

    node: str
    nearest_error: float
    learned_error: float
    flipped: int
    steps: int

    @property
    def kept(self) -> bool:
        """Whether the learned rounding replaced round-to-nearest."""
        return self.learned_error < self.nearest_error


def weight_range(reduce_range: bool) -> tuple[int, int]:
    """ONNX Runtime's symmetric int8 weight range: 7 bits with ``reduce_range``."""
    return (-64, 64) if reduce_range else (-127, 127)


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


@dataclass
class _Layer:
    node: onnx.NodeProto
    twin: onnx.NodeProto
    weight: onnx.TensorProto  # the int8 initializer in the Q/DQ model
    scale: np.ndarray  # broadcastable to the weight
    fp32_weight: np.ndarray
    fp32_bias: np.ndarray | None
    target: str  # the FP32 tensor to reconstruct (the activation's output when fused)
    activation: tuple[str, float, float] | None  # ("relu"|"clip", low, high)


def _activation(fp32: onnx.ModelProto, twin: onnx.NodeProto):
    """The Relu/Clip right after ``twin`` (its only consumer), and its output, else None."""
    consumers = [n for n in fp32.graph.node if twin.output[0] in n.input]
    if len(consumers) != 1:
        return twin.output[0], None
    act = consumers[0]
    if act.op_type == "Relu":
        return act.output[0], ("clip", 0.0, math.inf)
    if act.op_type == "Clip":
        inits = initializers(fp32)
        bounds = [-math.inf, math.inf]
        for i, name in enumerate(act.input[1:3]):
            if not name:
                continue
            if name not in inits:
                return twin.output[0], None
            bounds[i] = float(numpy_helper.to_array(inits[name]))
        attrs = _attrs(act)
        bounds[0] = attrs.get("min", bounds[0])
        bounds[1] = attrs.get("max", bounds[1])
        return act.output[0], ("clip", bounds[0], bounds[1])
    return twin.output[0], None


def _layers(fp32: onnx.ModelProto, qdq: onnx.ModelProto) -> list[_Layer]:
    """The quantized Conv/Gemm layers AdaRound can rewrite, in graph order."""
    twins = {n.name: n for n in fp32.graph.node if n.name}
    fp32_inits, inits, produced_by = initializers(fp32), initializers(qdq), producers(qdq)
    layers = []
    for node in qdq.graph.node:
        if node.op_type not in ("Conv", "Gemm") or node.domain not in ("", "ai.onnx"):
            continue
        why = None
        dq = produced_by.get(node.input[1]) if len(node.input) > 1 else None
        twin = twins.get(node.name)
        attrs = _attrs(node)
        if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in inits:
            why = "its weight is not quantized"
        elif inits[dq.input[0]].data_type != TensorProto.INT8:
            why = "its weight is not int8"
        elif twin is None or twin.op_type != node.op_type or twin.input[1] not in fp32_inits:
            why = "the FP32 model has no such layer with a constant weight"
        elif node.op_type == "Conv" and attrs.get("auto_pad", b"NOTSET") not in (
            b"NOTSET",
            "NOTSET",
        ):
            why = "auto_pad"
        elif node.op_type == "Conv" and len(inits[dq.input[0]].dims) not in (3, 4):
            why = "not a 1-D or 2-D convolution"
        elif node.op_type == "Gemm" and attrs.get("transA", 0):
            why = "transA"
        if why is None:
            zero = dq.input[2] if len(dq.input) > 2 else ""
            if zero and np.any(numpy_helper.to_array(inits[zero]) != 0):
                why = "its weight zero point is not 0"
            elif dq.input[1] not in inits:
                why = "its weight scale is not an initializer"
        if why is not None:
            logger.debug("AdaRound leaves %s '%s' alone: %s", node.op_type, node.name, why)
            continue
        weight = inits[dq.input[0]]
        scale = numpy_helper.to_array(inits[dq.input[1]]).astype(np.float64)
        if scale.size > 1:
            shape = [1] * len(weight.dims)
            shape[_attrs(dq).get("axis", 1)] = scale.size
            scale = scale.reshape(shape)
        bias = None
        if len(twin.input) > 2 and twin.input[2]:
            if twin.input[2] not in fp32_inits:
                logger.debug("AdaRound leaves '%s' alone: its bias is not constant", node.name)
                continue
            bias = numpy_helper.to_array(fp32_inits[twin.input[2]]).astype(np.float32)
        target, activation = _activation(fp32, twin)
        fp32_weight = numpy_helper.to_array(fp32_inits[twin.input[1]]).astype(np.float64)
        if fp32_weight.shape != tuple(weight.dims):
            logger.debug("AdaRound leaves '%s' alone: weight shapes differ", node.name)
            continue
        layers.append(_Layer(node, twin, weight, scale, fp32_weight, bias, target, activation))
    return layers


class _LayerData:
    """Each layer's input (from the Q/DQ model, the layers before it already rounded) and the
    FP32 output it should reproduce, collected a part of the model at a time.

    Running each model from its input up to every layer costs one run per layer up to it
    (quadratic in depth: EfficientNet-B0's first 120 s went on 28 of its 82 layers); a
    :class:`~edgec.passes.layer_io.StepwiseRun` per model and sample count goes on from the
    tensors kept from the layer before. The layer's own weights change only after its input
    was collected, and the Q/DQ run computes it later with the new ones. Runs exist for the
    probe's few samples and for one other sample count at a time (a run keeps tensors for all
    its samples, so a new count drops the old runs); the values are the same as runs from
    the input give.
    """

    def __init__(self, qdq: onnx.ModelProto, fp32: onnx.ModelProto, samples: np.ndarray):
        self.qdq, self.fp32, self.samples = qdq, fp32, samples
        self.runs: dict[int, tuple[StepwiseRun, StepwiseRun]] = {}

    def pair(self, layer: _Layer, count: int) -> tuple[np.ndarray, np.ndarray]:
        """The layer's input and FP32 target on the first ``count`` samples."""
        runs = self.runs.get(count)
        if runs is None:
            if count != _PROBE:
                self.runs = {n: r for n, r in self.runs.items() if n == _PROBE}
            chosen = self.samples[:count]
            runs = (StepwiseRun(self.qdq, chosen), StepwiseRun(self.fp32, chosen))
            self.runs[count] = runs
        qdq_run, fp32_run = runs
        x = _stack(qdq_run.values([layer.node.input[0]]))
        target = _stack(fp32_run.values([layer.target]))
        return x, target


def _stack(batches: list[list[np.ndarray]]) -> np.ndarray:
    """One tensor's per-batch values, stacked along the batch, as float32."""
    return np.concatenate([values[0].astype(np.float32) for values in batches])


def _forward(layer: _Layer, x, weight, bias):
    """The layer (and its fused activation) in torch."""
    import torch
    import torch.nn.functional as F

    attrs = _attrs(layer.node)
    if layer.node.op_type == "Gemm":
        w = weight.t() if attrs.get("transB", 0) else weight
        y = attrs.get("alpha", 1.0) * (x.reshape(len(x), -1) @ w)
        if bias is not None:
            y = y + attrs.get("beta", 1.0) * bias
    else:
        dims = weight.dim() - 2
        pads = list(attrs.get("pads", [0] * (2 * dims)))
        begin, end = pads[:dims], pads[dims:]
        if begin != end:
            # F.pad takes the last axis first: (left, right, top, bottom).
            x = F.pad(x, [p for d in reversed(range(dims)) for p in (begin[d], end[d])])
            begin = [0] * dims
        conv = F.conv1d if dims == 1 else F.conv2d
        y = conv(
            x,
            weight,
            bias,
            stride=list(attrs.get("strides", [1] * dims)),
            padding=begin,
            dilation=list(attrs.get("dilations", [1] * dims)),
            groups=attrs.get("group", 1),
        )
    if layer.activation is not None:
        _, low, high = layer.activation
        y = torch.clamp(
            y, min=None if math.isinf(low) else low, max=None if math.isinf(high) else high
        )
    return y


def _relative_error(layer, x, target, weight, bias) -> float:
    import torch

    with torch.no_grad():
        total, power = 0.0, 0.0
        for start in range(0, len(x), 128):
            y = _forward(layer, x[start : start + 128], weight, bias)
            t = target[start : start + 128]
            total += float(((y - t) ** 2).sum())
            power += float((t**2).sum())
    return total / max(power, 1e-30)


def _cache_key(layer: _Layer, samples_digest: str, seed: int, qrange: tuple[int, int]) -> str:
    digest = hashlib.sha256()
    for part in (layer.fp32_weight, layer.scale, layer.fp32_bias):
        if part is not None:
            digest.update(np.ascontiguousarray(part).tobytes())
    digest.update(
        f"{layer.node.name}|{layer.node.op_type}|{samples_digest}|{seed}|{qrange}".encode()
    )
    digest.update(b"".join(a.SerializeToString() for a in layer.node.attribute))
    return digest.hexdigest()


def _learn(
    layer: _Layer,
    x: np.ndarray,
    target: np.ndarray,
    qrange: tuple[int, int],
    steps: int,
    seconds: float,
    seed: int,
    progress: Callable[[str], None] | None,
    label: str,
) -> tuple[np.ndarray, RoundedLayer]:
    """Learn one layer's rounding; return its int8 weights and what it did."""
    import torch

    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    qmin, qmax = qrange
    scaled = layer.fp32_weight / layer.scale
    floor = np.floor(scaled)
    rest = scaled - floor
    nearest = np.clip(np.rint(scaled), qmin, qmax)
    scale_t = torch.from_numpy(np.broadcast_to(layer.scale, scaled.shape).astype(np.float32))
    floor_t = torch.from_numpy(floor.astype(np.float32))
    bias_t = None if layer.fp32_bias is None else torch.from_numpy(layer.fp32_bias)
    xs, ts = torch.from_numpy(x), torch.from_numpy(target)
    power = float((ts**2).mean()) or 1.0
    # h(V) = rest at the start: V = logit((rest - gamma) / (zeta - gamma)).
    p = np.clip((rest - _GAMMA) / (_ZETA - _GAMMA), 1e-4, 1 - 1e-4)
    v = torch.nn.Parameter(torch.from_numpy(np.log(p / (1 - p)).astype(np.float32)))
    optimiser = torch.optim.Adam([v], lr=1e-2)

    def soft_h():
        return torch.clamp(torch.sigmoid(v) * (_ZETA - _GAMMA) + _GAMMA, 0.0, 1.0)

    def weight_of(h):
        return scale_t * torch.clamp(floor_t + h, qmin, qmax)

    nearest_w = torch.from_numpy((nearest * layer.scale).astype(np.float32))
    nearest_error = _relative_error(layer, xs, ts, nearest_w, bias_t)
    # The regulariser weighs about as much as the error round-to-nearest leaves.
    lam = max(nearest_error, 1e-6)
    started = time.perf_counter()
    planned, step = steps, 0
    while step < planned:
        elapsed = time.perf_counter() - started
        if step == 10:  # fit the step count to the time this layer may take
            planned = int(min(steps, max(_MIN_STEPS, seconds / max(elapsed / 10, 1e-9))))
        elif step >= _MIN_STEPS and elapsed > 1.5 * seconds:
            break  # the machine got slower than the first steps said: keep the bound
        batch = torch.randint(0, len(xs), (min(_BATCH, len(xs)),), generator=generator)
        h = soft_h()
        y = _forward(layer, xs[batch], weight_of(h), bias_t)
        loss = ((y - ts[batch]) ** 2).mean() / power
        warm = planned // 5
        if step >= warm:
            beta = 20.0 + (2.0 - 20.0) * (step - warm) / max(planned - warm, 1)
            loss = loss + lam * (1 - (2 * h - 1).abs() ** beta).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        step += 1
        if progress is not None and (step % 50 == 0 or step == planned):
            progress(f"{label}: step {step}/{planned}")
    with torch.no_grad():
        learned = np.clip(floor + (soft_h().numpy() >= 0.5), qmin, qmax)
    learned_w = torch.from_numpy((learned * layer.scale).astype(np.float32))
    learned_error = _relative_error(layer, xs, ts, learned_w, bias_t)
    keep = learned_error < nearest_error
    chosen = learned if keep else nearest
    report = RoundedLayer(
        layer.node.name,
        nearest_error,
        learned_error,
        int(np.sum(learned != nearest)) if keep else 0,
        step,
    )
    return chosen.astype(np.int8), report


def round_weights(
    fp32: onnx.ModelProto,
    qdq: onnx.ModelProto,
    samples: np.ndarray,
    reduce_range: bool = False,
    steps: int | None = None,
    seconds: float | None = None,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> tuple[onnx.ModelProto, list[RoundedLayer]]:
    """The Q/DQ model with each quantized layer's int8 weights rounded by AdaRound.

    Args:
        fp32: The FP32 model ``qdq`` was quantized from (after
            :func:`~edgec.passes.quantize.preprocess`: node names must match).
        qdq: The Q/DQ model (not changed).
        samples: Calibration inputs for ``fp32``'s single input (at most
            :data:`MAX_SAMPLES` are used).
        reduce_range: The weights are 7-bit (``[-64, 64]``), as ONNX Runtime's
            ``reduce_range`` quantizes them.
        steps: Most optimiser steps per layer (``None``: :data:`DEFAULT_STEPS`).
        seconds: Time for all layers (``None``: :data:`DEFAULT_SECONDS`); each gets an even
            share of what is left, but at least 20 steps, so a layer slower than its share
            overruns a little; layers not started by then keep round-to-nearest.
        seed: Seeds the batches (same inputs and seed, same weights).
        progress: Called with a short line as layers and steps advance.

    Returns:
        The rounded copy and one :class:`RoundedLayer` per layer looked at.

    Raises:
        BadInputError: Bad samples (see
            :func:`~edgec.passes.calibration_data.check_calibration_samples`).
    """
    samples = check_calibration_samples(fp32, samples)[:MAX_SAMPLES]
    steps = DEFAULT_STEPS if steps is None else steps
    seconds = DEFAULT_SECONDS if seconds is None else seconds
    result = onnx.ModelProto()
    result.CopyFrom(qdq)
    layers = _layers(fp32, result)
    if not layers:
        return result, []
    qrange = weight_range(reduce_range)
    digest = hashlib.sha256(np.ascontiguousarray(samples).tobytes()).hexdigest()
    deadline = time.perf_counter() + seconds
    data = _LayerData(result, fp32, samples)
    done: list[RoundedLayer] = []
    nearest = 0
    for index, layer in enumerate(layers):
        label = f"layer {index + 1}/{len(layers)} '{layer.node.name}'"
        key = _cache_key(layer, digest, seed, qrange)
        if key in _CACHE:
            _CACHE.move_to_end(key)
            values = _CACHE[key]
            layer.weight.CopyFrom(numpy_helper.from_array(values, layer.weight.name))
            continue
        if time.perf_counter() >= deadline:
            # The time is spent (collecting a big model's inputs counts too): the layers not
            # learned before keep round-to-nearest; those learned before still come from the
            # cache (``seconds=0`` reuses exactly what an earlier call learned).
            nearest += 1
            continue
        if progress is not None:
            progress(label)
        # The layer's input (from the Q/DQ model, earlier layers rounded) and the FP32 output
        # it should reproduce; as many samples as fit in _BYTES (sized on a few first).
        x, target = data.pair(layer, _PROBE)
        per_sample = (x[0].size + target[0].size) * 4 * 3
        keep = max(_BATCH, min(len(samples), _BYTES // max(per_sample, 1)))
        if keep > len(x):
            x, target = data.pair(layer, keep)
        share = max(0.0, deadline - time.perf_counter()) / (len(layers) - index)
        values, report = _learn(layer, x, target, qrange, steps, share, seed, progress, label)
        _CACHE[key] = values
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
        layer.weight.CopyFrom(numpy_helper.from_array(values, layer.weight.name))
        done.append(report)
        logger.debug(
            "AdaRound %s: relative output error %.3g -> %.3g (%s, %d weights flipped, %d steps)",
            layer.node.name,
            report.nearest_error,
            report.learned_error,
            "kept" if report.kept else "round-to-nearest kept",
            report.flipped,
            report.steps,
        )
    if nearest:
        logger.info(
            "AdaRound: time budget spent; %d of %d layers keep round-to-nearest",
            nearest,
            len(layers),
        )
    if done:
        logger.info(
            "AdaRound: %d of %d layers learned, %d improved on round-to-nearest",
            len(done),
            len(layers),
            sum(r.kept for r in done),
        )
    return result, done
