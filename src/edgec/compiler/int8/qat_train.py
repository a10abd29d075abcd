"""Quantization-aware fine-tuning in torch, simulating the INT8 model ONNX Runtime will run.

:func:`finetune` takes the stage's pre-processed FP32 model, the Q/DQ model edgec's PTQ made
from it and the ranges it used, and trains the FP32 weights against a fake-quantized copy of
the graph (ONNX -> torch with :func:`~edgec.compiler.students.convert.onnx_to_torch`). Fake
quantization sits where ONNX Runtime's quantizer put Q/DQ in that PTQ model, with its
arithmetic, so the weights learn the errors of the INT8 model that will ship:

* **activations** — every tensor a ``QuantizeLinear`` of the PTQ model reads goes through
  ``torch.fake_quantize_per_tensor_affine`` with the scale and zero point ORT derives from the
  tensor's range (``compute_scale_zp``: the range widened to hold 0, ``(max - min) / (qmax -
  qmin)``, zero point ``round(qmin - min / scale)``; symmetric flavours use ``[-absmax,
  absmax]``). Tensors ORT quantizes with one shared scale (a MaxPool's or Reshape's output
  with its input's) share one range. Ranges start at the calibration's and follow an
  exponential moving average of each batch's min/max during the first
  :attr:`FinetuneSettings.observe_epochs` epochs, then stay fixed, so the last epochs train
  against the ranges that ship.
* **weights** — symmetric INT8 per output channel (or per tensor, as the PTQ model has it)
  with ``torch.fake_quantize_per_channel_affine``, in ORT's ranges for symmetric int8 weights:
  ``[-127, 127]``, or ``[-64, 64]`` with ``reduce_range`` (x86 without VNNI, whose u8s8
  kernels would otherwise saturate); the scales are recomputed from the weights at every step,
  as ORT computes them at export. Biases stay FP32 (ORT's int32 biases lose nothing visible).

``torch.ao.quantization``'s ``prepare_qat`` is not used: it places observers by module type and
derives parameters by torch's conventions (its ``reduce_range`` narrows activations, ORT's the
weights), so the model ORT runs would not be the one trained. Its fake-quant ops are.

Gradients pass the rounding straight through (torch's fake-quant ops). The loss is
distillation (Hinton et al.): ``T^2 KL(softmax(t/T) || softmax(s/T))`` on the target logits,
plus ``alpha`` times cross-entropy where labels exist. Adam with a cosine schedule; a
deterministic holdout from the training inputs picks the best epoch (accuracy with labels,
else agreement with the stage's FP32 outputs, which is what the guard judges); seeded,
single-threaded and deterministic (:func:`~edgec.compiler.students.distill.deterministic`).

Export: the trained weights are written back into a copy of the pre-processed ONNX model
(its node and tensor names unchanged, so exclusions and ranges still apply) and the learned
ranges into a copy of the calibration table; edgec's own quantizer then makes the Q/DQ model
with the PTQ flavour. A weight whose ONNX form cannot be rebuilt from its layer (a Gemm with
``alpha != 1``, a BatchNormalization left in the graph) is frozen instead of trained.

Failure policy: a model the converter cannot represent raises :class:`QatUnavailable` (the
caller keeps the PTQ outcome and records why).
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import numpy_helper
from torch import nn
from torch.nn.utils import parametrize

from edgec.compiler.students.context import OnnxModule, UnsupportedModelError
from edgec.compiler.students.convert import check_against_onnxruntime, onnx_to_torch
from edgec.compiler.students.distill import deterministic
from edgec.passes.calibration_table import CalibrationTable
from edgec.passes.quantize import Int8Flavour

logger = logging.getLogger(__name__)

HOLDOUT_SHARE = 0.1
CHECK_SAMPLES = 8
_TINY = float(np.finfo(np.float32).tiny)


class QatUnavailable(Exception):
    """QAT cannot run on this model (the reason is the message)."""


@dataclass(frozen=True)
class FinetuneSettings:
    """How the fake-quantized model trains.

    Attributes:
        epochs: Most epochs.
        observe_epochs: Epochs during which the activation ranges follow the data.
        lr: Adam learning rate (cosine-annealed to zero).
        batch_size: Mini-batch size.
        temperature: Distillation temperature.
        alpha: Weight of the label loss (when there are labels).
        momentum: Weight of a batch's min/max in the ranges' moving average.
        max_seconds: Wall time after which training stops (at the next mini-batch).
        seed: Seed for shuffling and the holdout.
    """

    epochs: int = 8
    observe_epochs: int = 3
    lr: float = 3e-4
    batch_size: int = 32
    temperature: float = 4.0
    alpha: float = 0.5
    momentum: float = 0.05
    max_seconds: float = 300.0
    seed: int = 0

    def to_json(self) -> dict:
        """The manifest form (no wall-time limit: it does not change the bytes)."""
        return {k: v for k, v in self.__dict__.items() if k != "max_seconds"}


@dataclass
class FinetuneResult:
    """The fine-tuned model and how training went.

    Attributes:
        model: The pre-processed FP32 model with the trained weights (same names).
        calibration: The calibration table with the learned ranges.
        epochs_run: Epochs run.
        best_epoch: The epoch whose weights were kept (0: none beat the PTQ start).
        holdout_before: Holdout score of the fake-quantized model before training.
        holdout: Holdout score of the kept weights.
        metric: ``accuracy`` or ``agreement`` (with the stage's FP32 outputs).
        quantized_tensors: Activations fake-quantized.
        quantized_weights: Layers whose weights were fake-quantized.
        frozen: Parameters kept as they were (their ONNX form cannot be rebuilt).
        seconds: Wall time.
        stopped_by_time: Whether ``max_seconds`` ended training early.
        steps: Optimiser steps taken.
    """

    model: onnx.ModelProto
    calibration: CalibrationTable
    epochs_run: int
    best_epoch: int
    holdout_before: float
    holdout: float
    metric: str
    quantized_tensors: int
    quantized_weights: int
    frozen: list[str] = field(default_factory=list)
    seconds: float = 0.0
    stopped_by_time: bool = False
    steps: int = 0


# ------------------------------------------------------------------------- fake quantization
class ActivationRange(nn.Module):
    """One activation range, fake-quantizing the tensors that share it the way ORT would.

    Attributes:
        qmin: Lowest quantized value (0 for u8, -128 for s8, -127 for symmetric s8).
        qmax: Highest quantized value.
        symmetric: Zero point in the middle of the range (TensorRT-style activations).
        momentum: Weight of a batch's min/max in the moving average.
        observing: Whether :meth:`observe` updates the range.
    """

    def __init__(self, low: float, high: float, qmin: int, qmax: int, symmetric: bool, momentum):
        super().__init__()
        self.register_buffer("low", torch.tensor(float(low), dtype=torch.float64))
        self.register_buffer("high", torch.tensor(float(high), dtype=torch.float64))
        self.qmin, self.qmax, self.symmetric, self.momentum = qmin, qmax, symmetric, momentum
        self.observing = False

    def qparams(self) -> tuple[float, int]:
        """Scale and zero point for the current range (ORT's ``compute_scale_zp``)."""
        low, high = min(float(self.low), 0.0), max(float(self.high), 0.0)
        if self.symmetric:
            absmax = max(abs(low), abs(high))
            low, high = -absmax, absmax
        scale = (high - low) / (self.qmax - self.qmin)
        if scale < _TINY:
            return 1.0, 0
        if self.symmetric:
            zero = round((self.qmin + self.qmax) / 2.0)
        else:
            zero = int(np.round(self.qmin - low / scale))
        return float(np.float32(scale)), int(min(max(zero, self.qmin), self.qmax))

    @torch.no_grad()
    def observe(self, x: torch.Tensor) -> None:
        """Move the range towards the batch's min/max (when observing)."""
        if not self.observing:
            return
        m = self.momentum
        self.low += m * (float(x.min()) - self.low)
        self.high += m * (float(x.max()) - self.high)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` through quantize and dequantize at the current range."""
        scale, zero = self.qparams()
        return torch.fake_quantize_per_tensor_affine(x, scale, zero, self.qmin, self.qmax)

    def range(self) -> tuple[float, float]:
        """The range, as the calibration table stores it."""
        return float(self.low), float(self.high)


class WeightQuant(nn.Module):
    """Symmetric INT8 fake quantization of a weight (a parametrization of the layer).

    Attributes:
        axis: The per-channel axis of the torch weight, or ``None`` for one scale.
        qmax: 127, or 64 with ``reduce_range`` (the range is ``[-qmax, qmax]``).
    """

    def __init__(self, axis: int | None, qmax: int):
        super().__init__()
        self.axis, self.qmax = axis, qmax

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        """The weight as INT8 would hold it (the scale follows the weight, as at export)."""
        if self.axis is None:
            scale = float(w.detach().abs().max()) / self.qmax
            scale = scale if scale >= _TINY else 1.0
            return torch.fake_quantize_per_tensor_affine(w, scale, 0, -self.qmax, self.qmax)
        dims = [d for d in range(w.dim()) if d != self.axis]
        absmax = w.detach().abs().amax(dim=dims) if dims else w.detach().abs()
        scale = absmax.double() / self.qmax
        scale = torch.where(scale < _TINY, torch.ones_like(scale), scale).float()
        zero = torch.zeros(scale.shape, dtype=torch.int32)
        return torch.fake_quantize_per_channel_affine(
            w, scale, zero, self.axis, -self.qmax, self.qmax
        )


class QatProgram(nn.Module):
    """An :class:`OnnxModule`'s program with the PTQ model's activation quantization.

    Attributes:
        module: The converted FP32 model (its layers carry the weight parametrizations).
        ranges: One :class:`ActivationRange` per shared activation scale.
        tensor_range: Tensor name -> index in ``ranges``.
        owners: The tensor whose values move each range (the first of its group computed).
    """

    def __init__(self, module: OnnxModule, ranges: list[ActivationRange], tensor_range: dict):
        super().__init__()
        self.module = module
        self.ranges = nn.ModuleList(ranges)
        self.tensor_range = dict(tensor_range)
        order = [*module.input_names, *(o for step in module.steps for o in step.outputs)]
        self.owners: set[str] = set()
        seen: set[int] = set()
        for name in order:
            index = self.tensor_range.get(name)
            if index is not None and index not in seen:
                seen.add(index)
                self.owners.add(name)

    def _quantize(self, name: str, value: torch.Tensor) -> torch.Tensor:
        index = self.tensor_range.get(name)
        if index is None:
            return value
        quant = self.ranges[index]
        if name in self.owners and self.training:
            quant.observe(value)
        return quant(value)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The fake-quantized model on a batch (one output)."""
        module = self.module
        env = {module.input_names[0]: self._quantize(module.input_names[0], x)}
        for name, key in module._const_of.items():
            env[name] = module.consts[key]
        for step in module.steps:
            call = module.layers[step.layer] if step.layer is not None else step.fn
            result = call(*(env[name] for name in step.inputs))
            values = [result] if len(step.outputs) == 1 else list(result)
            for name, value in zip(step.outputs, values, strict=False):
                env[name] = self._quantize(name, value)
        return env[module.output_names[0]]

    def train(self, mode: bool = True) -> QatProgram:
        """Training mode, except normalisation layers: their statistics stay the model's."""
        super().train(mode)
        for layer in self.module.modules():
            if isinstance(layer, nn.modules.batchnorm._BatchNorm):
                layer.eval()
        return self


# ------------------------------------------------------------------------- the PTQ model read
def _constants(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    """The model's initializers by name."""
    return {init.name: init for init in model.graph.initializer}


def _activation_ranges(
    qdq: onnx.ModelProto,
    table: CalibrationTable,
    flavour: Int8Flavour,
    names: set[str],
    momentum: float,
) -> tuple[list[ActivationRange], dict[str, int]]:
    """The activations ``qdq`` quantizes that the torch program computes, grouped by scale."""
    inits = _constants(qdq)
    if flavour.activations == "uint8":
        qmin, qmax = (0, 255)
    else:
        qmin, qmax = (-127, 127) if flavour.symmetric_activations else (-128, 127)
    members: dict[str, list[str]] = {}  # scale initializer -> the tensors sharing it
    for node in qdq.graph.node:
        if node.op_type != "QuantizeLinear" or node.input[0] in inits:
            continue
        tensor = node.input[0]
        if tensor not in names:
            logger.debug("QAT: quantized tensor '%s' is not computed in torch", tensor)
            continue
        group = members.setdefault(node.input[1], [])
        if tensor not in group:
            group.append(tensor)
    ranges: list[ActivationRange] = []
    tensor_range: dict[str, int] = {}
    for tensors in members.values():
        # The shared scale is the widest member's (a MaxPool's input holds its output).
        known = [table.ranges[t] for t in tensors if t in table.ranges] or [(0.0, 0.0)]
        low, high = min(r[0] for r in known), max(r[1] for r in known)
        for tensor in tensors:
            tensor_range.setdefault(tensor, len(ranges))
        ranges.append(
            ActivationRange(low, high, qmin, qmax, flavour.symmetric_activations, momentum)
        )
    return ranges, tensor_range


def _weight_spec(qdq: onnx.ModelProto, node_name: str) -> tuple[bool, int | None] | None:
    """``(per_channel, onnx axis)`` of the node's quantized weight in ``qdq``, else ``None``."""
    node = next((n for n in qdq.graph.node if n.name == node_name), None)
    if node is None or len(node.input) < 2:
        return None
    producer = next((n for n in qdq.graph.node if node.input[1] in n.output), None)
    if producer is None or producer.op_type != "DequantizeLinear":
        return None
    scale = next((i for i in qdq.graph.initializer if i.name == producer.input[1]), None)
    if scale is None:
        return None
    per_channel = int(np.prod(scale.dims)) > 1 if scale.dims else False
    axis = next((a.i for a in producer.attribute if a.name == "axis"), 1)
    return per_channel, axis if per_channel else None


# ----------------------------------------------------------------------------- writing back
@dataclass
class _Writer:
    """How one trainable parameter goes back into an initializer of the ONNX model."""

    param: nn.Parameter
    initializer: str
    to_onnx: Callable[[np.ndarray], np.ndarray]


def _writers(
    module: OnnxModule, pre: onnx.ModelProto
) -> tuple[list[_Writer], dict[str, tuple[onnx.NodeProto, bool]]]:
    """Writers for the parameters whose ONNX form can be rebuilt; layer key -> (node, whether
    its torch weight is the ONNX weight transposed)."""
    inits = {i.name: numpy_helper.to_array(i) for i in pre.graph.initializer}
    uses: dict[str, int] = {}
    for node in pre.graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    producer = {n.output[0]: n for n in pre.graph.node if n.output}
    writers: list[_Writer] = []
    layer_nodes: dict[str, tuple[onnx.NodeProto, bool]] = {}

    def own(name: str) -> bool:
        return bool(name) and name in inits and uses.get(name, 0) == 1

    for step in module.steps:
        if step.layer is None:
            continue
        node = producer.get(step.outputs[0])
        layer = module.layers[step.layer]
        if node is None:
            continue
        op = node.op_type
        weight = node.input[1] if len(node.input) > 1 else ""
        bias = node.input[2] if len(node.input) > 2 else ""
        if op in ("Conv", "ConvTranspose") and own(weight):
            layer_nodes[step.layer] = (node, False)
            writers.append(_Writer(layer.weight, weight, lambda w: w))
            if own(bias) and layer.bias is not None:
                writers.append(
                    _Writer(layer.bias, bias, lambda b, s=inits[bias].shape: b.reshape(s))
                )
        elif op == "MatMul" and own(weight):
            layer_nodes[step.layer] = (node, True)
            writers.append(_Writer(layer.weight, weight, lambda w: w.T))
        elif op == "Gemm" and own(weight):
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            if float(attrs.get("alpha", 1.0)) != 1.0:
                continue
            trans_b = bool(attrs.get("transB", 0))
            layer_nodes[step.layer] = (node, not trans_b)
            writers.append(
                _Writer(layer.weight, weight, (lambda w: w) if trans_b else (lambda w: w.T))
            )
            if (
                own(bias)
                and layer.bias is not None
                and float(attrs.get("beta", 1.0)) == 1.0
                and inits[bias].size == layer.bias.numel()
            ):
                writers.append(
                    _Writer(layer.bias, bias, lambda b, s=inits[bias].shape: b.reshape(s))
                )
        elif op == "PRelu" and own(weight):
            writers.append(
                _Writer(layer.weight, weight, lambda w, s=inits[weight].shape: w.reshape(s))
            )
    for name, key in module._const_of.items():
        if own(name) and inits[name].dtype == np.float32:
            writers.append(_Writer(module.consts[key], name, lambda c: c))
    return writers, layer_nodes


def _write_back(pre: onnx.ModelProto, writers: list[_Writer]) -> onnx.ModelProto:
    model = onnx.ModelProto()
    model.CopyFrom(pre)
    values = {
        w.initializer: w.to_onnx(w.param.detach().numpy().astype(np.float32)) for w in writers
    }
    for index, init in enumerate(model.graph.initializer):
        if init.name in values:
            array = np.ascontiguousarray(values[init.name], dtype=np.float32)
            model.graph.initializer[index].CopyFrom(numpy_helper.from_array(array, init.name))
    return model


@dataclass
class Simulation:
    """The fake-quantized torch program of a PTQ model, ready to train.

    Attributes:
        program: The program (weights parametrized, activation ranges in place).
        writers: How each trainable parameter goes back into the ONNX model.
        layer_nodes: Layer key -> (its ONNX node, whether its torch weight is transposed).
        quantized_weights: Layers whose weights are fake-quantized.
        frozen: Parameters kept as they are (their ONNX form cannot be rebuilt).
    """

    program: QatProgram
    writers: list[_Writer]
    layer_nodes: dict[str, tuple[onnx.NodeProto, bool]]
    quantized_weights: int
    frozen: list[str]


def simulate(
    pre: onnx.ModelProto,
    qdq: onnx.ModelProto,
    table: CalibrationTable,
    flavour: Int8Flavour,
    check: np.ndarray,
    momentum: float = FinetuneSettings.momentum,
) -> Simulation:
    """``pre`` in torch with the fake quantization of its PTQ model ``qdq`` (module docstring).

    Args:
        pre: The pre-processed FP32 model ``qdq`` was quantized from.
        qdq: Its Q/DQ model.
        table: The ranges ``qdq`` was quantized with (the activation ranges' start).
        flavour: Its flavour.
        check: A few inputs the conversion is checked on against ONNX Runtime.
        momentum: Weight of a batch's min/max in the ranges' moving average.

    Raises:
        QatUnavailable: The model cannot be converted to torch.
    """
    try:
        module = onnx_to_torch(pre)
        check_against_onnxruntime(module, pre, np.ascontiguousarray(check, dtype=np.float32))
    except UnsupportedModelError as err:
        raise QatUnavailable(f"the stage cannot be trained in torch: {err}") from None
    names = {*module.input_names, *(o for step in module.steps for o in step.outputs)}
    ranges, tensor_range = _activation_ranges(qdq, table, flavour, names, momentum)
    writers, layer_nodes = _writers(module, pre)
    trainable = {id(w.param) for w in writers}
    frozen = [name for name, p in module.named_parameters() if id(p) not in trainable]
    for _, p in module.named_parameters():
        p.requires_grad_(id(p) in trainable)
    # ORT's ranges for symmetric int8 weights: [-127, 127], or [-64, 64] with reduce_range.
    qmax = 64 if flavour.reduce_range else 127
    quantized = 0
    for key, (node, transposed) in layer_nodes.items():
        spec = _weight_spec(qdq, node.name)
        if spec is None:
            continue
        per_channel, axis = spec
        layer = module.layers[key]
        if per_channel:
            axis = axis % layer.weight.dim()
            axis = 1 - axis if transposed else axis
        parametrize.register_parametrization(layer, "weight", WeightQuant(axis, qmax))
        quantized += 1
    program = QatProgram(module, ranges, tensor_range)
    return Simulation(program, writers, layer_nodes, quantized, frozen)


# ----------------------------------------------------------------------------------- training
def _loss(out, target, labels, settings: FinetuneSettings) -> torch.Tensor:
    out = out.reshape(len(out), -1)
    t = settings.temperature
    soft = F.kl_div(
        F.log_softmax(out / t, dim=1),
        F.log_softmax(target / t, dim=1),
        reduction="batchmean",
        log_target=True,
    ) * (t * t)
    if labels is None:
        return soft
    return settings.alpha * F.cross_entropy(out, labels) + (1.0 - settings.alpha) * soft


def _score(
    program: QatProgram, x: torch.Tensor, reference: torch.Tensor, target: torch.Tensor, settings
) -> tuple[float, float]:
    """Holdout score (share of top-1 matching ``reference``) and distillation loss."""
    program.eval()
    with torch.no_grad():
        out = torch.cat(
            [
                program(x[i : i + 256]).reshape(len(x[i : i + 256]), -1)
                for i in range(0, len(x), 256)
            ]
        )
        loss = float(_loss(out, target, None, settings))
    return float((out.argmax(dim=1) == reference).float().mean()), loss


def _holdout(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng(seed).permutation(n)
    count = max(1, round(n * HOLDOUT_SHARE))
    return np.sort(order[count:]), np.sort(order[:count])


def finetune(
    pre: onnx.ModelProto,
    qdq: onnx.ModelProto,
    table: CalibrationTable,
    flavour: Int8Flavour,
    x: np.ndarray,
    target_logits: np.ndarray,
    fp32_logits: np.ndarray,
    labels: np.ndarray | None,
    settings: FinetuneSettings,
    progress: Callable[[int, int, float, float], None] | None = None,
) -> FinetuneResult:
    """Fine-tune ``pre`` against the INT8 model ``qdq`` (see the module docstring).

    Args:
        pre: The pre-processed FP32 model ``qdq`` was quantized from.
        qdq: Its Q/DQ model (where quantization sits, which weights are per-channel).
        table: The ranges ``qdq`` was quantized with.
        flavour: Its flavour.
        x: Training inputs.
        target_logits: The logits to distil from, on ``x`` (the teacher's).
        fp32_logits: The stage's FP32 outputs on ``x`` (the holdout's reference without labels).
        labels: Labels of ``x``, or ``None``.
        settings: Training settings.
        progress: Called after every epoch with (epoch, epochs, loss, holdout score).

    Raises:
        QatUnavailable: The model cannot be converted to torch, or written back.
    """
    started = time.perf_counter()
    x = np.ascontiguousarray(x, dtype=np.float32)
    sim = simulate(pre, qdq, table, flavour, x[:CHECK_SAMPLES], settings.momentum)
    program, module, ranges = sim.program, sim.program.module, list(sim.program.ranges)
    tensor_range, writers, layer_nodes = sim.program.tensor_range, sim.writers, sim.layer_nodes

    fit, hold = _holdout(len(x), settings.seed)
    xt = torch.from_numpy(x)
    tt = torch.from_numpy(np.ascontiguousarray(target_logits, dtype=np.float32).reshape(len(x), -1))
    yt = None if labels is None else torch.from_numpy(labels.astype(np.int64))
    metric = "accuracy" if yt is not None else "agreement"
    reference = (
        yt[hold]
        if yt is not None
        else torch.from_numpy(fp32_logits.reshape(len(x), -1).argmax(axis=1))[hold]
    )
    with deterministic(settings.seed):
        # Best: the highest score, then the lowest loss (a small holdout's score saturates).
        before, loss = _score(program, xt[hold], reference, tt[hold], settings)
        best_key = (before, -loss)
        best_state, best_epoch = copy.deepcopy(program.state_dict()), 0
        params = [p for p in program.parameters() if p.requires_grad]
        optimizer = torch.optim.Adam(params, lr=settings.lr)
        steps = settings.epochs * math.ceil(len(fit) / settings.batch_size)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(steps, 1))
        generator = torch.Generator().manual_seed(settings.seed)
        epochs_run, stopped_by_time, taken = 0, False, 0
        for epoch in range(1, settings.epochs + 1):
            if time.perf_counter() - started > settings.max_seconds:
                stopped_by_time = True
                break
            for quant in ranges:
                quant.observing = epoch <= settings.observe_epochs
            program.train()
            order = torch.from_numpy(fit)[torch.randperm(len(fit), generator=generator)]
            total, seen = 0.0, 0
            for start in range(0, len(order), settings.batch_size):
                if time.perf_counter() - started > settings.max_seconds:
                    stopped_by_time = True  # a huge data set: end inside the epoch
                    break
                batch = order[start : start + settings.batch_size]
                loss = _loss(
                    program(xt[batch]), tt[batch], None if yt is None else yt[batch], settings
                )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                taken += 1
                schedule.step()
                total += loss.item() * len(batch)
                seen += len(batch)
            for quant in ranges:
                quant.observing = False
            score, hold_loss = _score(program, xt[hold], reference, tt[hold], settings)
            epochs_run = epoch
            if progress is not None:
                progress(epoch, settings.epochs, total / max(seen, 1), score)
            if (score, -hold_loss) > best_key:
                best_key, best_epoch = (score, -hold_loss), epoch
                best_state = copy.deepcopy(program.state_dict())
            if stopped_by_time:
                break
        program.load_state_dict(best_state)
    program.eval()
    learned = dict(table.ranges)
    for name, index in tensor_range.items():
        learned[name] = ranges[index].range()
    calibration = CalibrationTable(
        method=table.method, samples=table.samples, ranges=learned, data_sha256=table.data_sha256
    )
    for key in layer_nodes:
        layer = module.layers[key]
        if parametrize.is_parametrized(layer, "weight"):
            parametrize.remove_parametrizations(layer, "weight", leave_parametrized=False)
    model = _write_back(pre, writers)
    try:
        check_against_onnxruntime(module, model, x[:CHECK_SAMPLES])
    except UnsupportedModelError as err:  # a bug in a writer: say so rather than ship it
        raise QatUnavailable(f"the fine-tuned weights could not be written back: {err}") from None
    logger.info(
        "QAT: %d activations and %d weights fake-quantized; holdout %s %.4f -> %.4f "
        "(epoch %d of %d)",
        len(tensor_range),
        sim.quantized_weights,
        metric,
        before,
        best_key[0],
        best_epoch,
        epochs_run,
    )
    return FinetuneResult(
        model=model,
        calibration=calibration,
        epochs_run=epochs_run,
        best_epoch=best_epoch,
        holdout_before=before,
        holdout=best_key[0],
        metric=metric,
        quantized_tensors=len(tensor_range),
        quantized_weights=sim.quantized_weights,
        frozen=sim.frozen,
        seconds=time.perf_counter() - started,
        stopped_by_time=stopped_by_time,
        steps=taken,
    )
