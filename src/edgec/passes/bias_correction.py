"""Empirical bias correction of a Q/DQ INT8 model (Nagel et al. 2019, section 4.2).

Quantizing a layer's weights (and the activations before it) shifts the mean of its output:
``E[y_q] - E[y]`` per output channel is not zero, and a per-tensor grid makes the shift large
on the channels it serves badly. The shift is a per-channel constant, so it can be taken out
of the layer's bias: ``b_i -= E[y_q,i] - E[y_i]``, the expectations over calibration inputs,
``y`` the layer's output in the FP32 model and ``y_q`` in the Q/DQ model (both before the
activation that follows it; ONNX Runtime's quantizer drops a Relu after a Conv, the output
QuantizeLinear clamps instead, and the Conv keeps its node name).

The layers are corrected one at a time in graph order, each measured with every earlier
correction in place (a correction changes what later layers read), as the paper's empirical
variant does. The Q/DQ model runs forward a layer at a time
(:class:`~edgec.passes.layer_io.StepwiseRun`: each layer computed from the tensors kept from
the part before it, and once more after its correction), so measuring all layers costs about
two runs of the model, not one run up to each layer (EfficientNet-B0: 41 runs of the whole
model); the FP32 means take one run for all layers. Bounded work: at most :data:`MAX_SAMPLES`
inputs, fewer for big inputs (:func:`sample_count`: an image of 224x224 has thousands of
positions per channel, so 32 of them give steady channel means, and a deep model at that size
would otherwise take minutes). A layer's measured means are cached by the part of the Q/DQ
graph that computes them (and the inputs): the accuracy guard re-quantizes the model with a
few layers kept in FP32, and every layer upstream of those is then measured once, not again.

Which layers: every ``Conv`` and ``Gemm`` whose weight is the output of a DequantizeLinear
(quantized; layers kept in FP32 are left alone) and whose node name is in the FP32 model. The
bias is ORT's int32 bias behind a DequantizeLinear (a Conv whose bias also carries a folded
HardSigmoid's shift, :func:`~edgec.passes.qdq_hard_sigmoid.fold_hard_sigmoid`, is measured
against the FP32 output plus that shift); the correction moves it by
``round(shift / bias_scale)`` steps (saturating at the int32 limits). A Conv without a bias
gets one, in the same form ORT gives biases (int32, scale ``input_scale * weight_scale`` per
output channel, zero point 0), so ORT still fuses it into an integer kernel. Skipped (logged at
``debug``): a Gemm without a bias, a bias that is not an int32 DequantizeLinear of an
initializer, a layer the FP32 model does not have.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgec.passes.calibration_data import check_calibration_samples
from edgec.passes.layer_io import (
    StepwiseRun,
    digest,
    initializers,
    producers,
    tensor_batches,
)

logger = logging.getLogger(__name__)

#: Calibration inputs used for the means (the first ones): at most MAX_SAMPLES, and for big
#: inputs only as many as hold _SAMPLE_VALUES input values, but at least MIN_SAMPLES.
MAX_SAMPLES = 128
MIN_SAMPLES = 32
_SAMPLE_VALUES = 1 << 22
_CACHE: OrderedDict[str, np.ndarray] = OrderedDict()
_CACHE_SIZE = 4096
_INT32 = np.iinfo(np.int32)


@dataclass(frozen=True)
class BiasCorrection:
    """What correcting one layer did.

    Attributes:
        node: The Conv/Gemm node name.
        max_shift: Largest |mean output shift| over its channels before the correction.
        added_bias: Whether the layer had no bias and got one.
    """

    node: str
    max_shift: float
    added_bias: bool


def channel_means(
    model: onnx.ModelProto, tensors: dict[str, int], samples: np.ndarray
) -> dict[str, np.ndarray]:
    """Per-channel means of intermediate tensors over ``samples``, on ONNX Runtime with graph
    optimisations off (a Q/DQ model runs its reference arithmetic; see
    :func:`~edgec.passes.layer_io.tensor_batches`).

    Args:
        model: Any model with one input.
        tensors: Tensor name -> its channel axis (1 for a Conv output, -1 for a Gemm's).
        samples: Inputs ``[N, ...]``; a static batch size ``B`` uses the first ``N // B * B``.
    """
    names = list(tensors)
    return _means(tensor_batches(model, names, samples), names, tensors)


def _means(batches, names: list[str], tensors: dict[str, int]) -> dict[str, np.ndarray]:
    """Per-channel means of ``names`` (channel axis in ``tensors``) over their ``batches``
    (each a list of values in the order of ``names``)."""
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = dict.fromkeys(names, 0)
    for values in batches:
        for name, value in zip(names, values, strict=True):
            moved = np.moveaxis(value.astype(np.float64), tensors[name], 0)
            flat = moved.reshape(moved.shape[0], -1)
            sums[name] = sums.get(name, 0.0) + flat.sum(axis=1)
            counts[name] += flat.shape[1]
    return {name: sums[name] / counts[name] for name in names}


@dataclass
class _Layer:
    node: onnx.NodeProto
    reference: str  # the FP32 model's output of the same node
    axis: int
    offset: float = 0.0  # what the Q/DQ output is meant to exceed the FP32 one by


def _folded_shift(fp32: onnx.ModelProto, twin: onnx.NodeProto, node: onnx.NodeProto) -> float:
    """The HardSigmoid shift ``beta / alpha`` that
    :func:`~edgec.passes.qdq_hard_sigmoid.fold_hard_sigmoid` moved into this Conv's bias
    (its output is then ``<HardSigmoid output>_shifted``), else 0: the shift is meant, not an
    error to correct."""
    consumers = [n for n in fp32.graph.node if twin.output[0] in n.input]
    if len(consumers) != 1 or consumers[0].op_type != "HardSigmoid":
        return 0.0
    hard_sigmoid = consumers[0]
    if node.output[0] != f"{hard_sigmoid.output[0]}_shifted":
        return 0.0
    values = {a.name: a.f for a in hard_sigmoid.attribute}
    return values.get("beta", 0.5) / values.get("alpha", 0.2)


def _layers(fp32: onnx.ModelProto, qdq: onnx.ModelProto) -> list[_Layer]:
    """The quantized Conv/Gemm layers of ``qdq`` that the FP32 model also has, in graph order."""
    fp32_nodes = {n.name: n for n in fp32.graph.node if n.name}
    produced_by = producers(qdq)
    layers = []
    for node in qdq.graph.node:
        if node.op_type not in ("Conv", "Gemm") or node.domain not in ("", "ai.onnx"):
            continue
        weight = produced_by.get(node.input[1]) if len(node.input) > 1 else None
        if weight is None or weight.op_type != "DequantizeLinear":
            continue  # kept in FP32
        twin = fp32_nodes.get(node.name)
        if twin is None or twin.op_type != node.op_type:
            logger.debug("%s '%s' not corrected: not in the FP32 model", node.op_type, node.name)
            continue
        axis = 1 if node.op_type == "Conv" else -1
        layers.append(_Layer(node, twin.output[0], axis, _folded_shift(fp32, twin, node)))
    return layers


def _scale_of(model: onnx.ModelProto, dq_output: str) -> np.ndarray | None:
    """The scale of the DequantizeLinear that produces ``dq_output`` (float64), else ``None``."""
    node = producers(model).get(dq_output)
    init = initializers(model).get(node.input[1]) if node is not None else None
    if node is None or node.op_type != "DequantizeLinear" or init is None:
        return None
    return numpy_helper.to_array(init).astype(np.float64)


def _add_bias(model: onnx.ModelProto, node: onnx.NodeProto, channels: int) -> str | None:
    """Give a biasless quantized Conv a zero int32 bias behind a DequantizeLinear, as ORT
    does; return why not, or ``None``."""
    x_scale = _scale_of(model, node.input[0])
    w_scale = _scale_of(model, node.input[1])
    if x_scale is None or w_scale is None or x_scale.size != 1:
        return "its input or weight scale is not a constant DequantizeLinear scale"
    scale = np.broadcast_to(x_scale.reshape(()) * w_scale.reshape(-1), (channels,))
    base = f"{node.name}_bias_correction"
    model.graph.initializer.extend(
        [
            numpy_helper.from_array(np.zeros(channels, np.int32), f"{base}_quantized"),
            numpy_helper.from_array(scale.astype(np.float32), f"{base}_scale"),
            numpy_helper.from_array(np.zeros(channels, np.int32), f"{base}_zero_point"),
        ]
    )
    dq = helper.make_node(
        "DequantizeLinear",
        [f"{base}_quantized", f"{base}_scale", f"{base}_zero_point"],
        [base],
        name=f"{base}_DequantizeLinear",
        axis=0,
    )
    # Before the layer, so the graph stays topologically sorted.
    index = list(model.graph.node).index(node)
    model.graph.node.insert(index, dq)
    if len(node.input) > 2:  # an empty name stands for the missing bias
        node.input[2] = base
    else:
        node.input.append(base)
    return None


def _shift_bias(model: onnx.ModelProto, node: onnx.NodeProto, shift: np.ndarray) -> str | None:
    """Subtract ``shift`` from the layer's int32 bias; return why not, or ``None``."""
    dq = producers(model).get(node.input[2])
    inits = initializers(model)
    if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in inits:
        return "its bias is not a DequantizeLinear of an initializer"
    bias = inits[dq.input[0]]
    if bias.data_type != TensorProto.INT32:
        return "its bias is not int32"
    scale = numpy_helper.to_array(inits[dq.input[1]]).astype(np.float64)
    values = numpy_helper.to_array(bias).astype(np.int64)
    steps = np.rint(shift / np.broadcast_to(scale.reshape(-1), shift.shape)).astype(np.int64)
    corrected = np.clip(values - steps, _INT32.min, _INT32.max).astype(np.int32)
    bias.CopyFrom(numpy_helper.from_array(corrected, bias.name))
    return None


def sample_count(samples: np.ndarray) -> int:
    """How many of ``samples`` (the first ones) the correction measures on."""
    per_sample = max(int(np.prod(samples.shape[1:])), 1)
    return min(len(samples), MAX_SAMPLES, max(MIN_SAMPLES, _SAMPLE_VALUES // per_sample))


def _measured(run: StepwiseRun, output: str, axis: int) -> np.ndarray:
    """``output``'s channel means on the run's samples, from the cache when the graph up to it
    was measured before on the same inputs."""
    key = f"{axis}|{digest(run.model, [output], run.samples)}"
    if key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key]
    means = _means(run.values([output]), [output], {output: axis})[output]
    _CACHE[key] = means
    while len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return means


def correct_biases(
    fp32: onnx.ModelProto,
    qdq: onnx.ModelProto,
    samples: np.ndarray,
    progress: Callable[[str], None] | None = None,
) -> tuple[onnx.ModelProto, list[BiasCorrection]]:
    """The Q/DQ model with each quantized layer's mean output shift taken out of its bias.

    Args:
        fp32: The FP32 model ``qdq`` was quantized from (after
            :func:`~edgec.passes.quantize.preprocess`: node names must match).
        qdq: The Q/DQ model (not changed).
        samples: Calibration inputs for ``fp32``'s single input (the first
            :func:`sample_count` are used).
        progress: Called with a short line per layer, for a progress bar.

    Returns:
        The corrected copy and one :class:`BiasCorrection` per corrected layer.

    Raises:
        BadInputError: Bad samples (see
            :func:`~edgec.passes.calibration_data.check_calibration_samples`).
    """
    samples = check_calibration_samples(fp32, samples)
    samples = samples[: sample_count(samples)]
    result = onnx.ModelProto()
    result.CopyFrom(qdq)
    layers = _layers(fp32, result)
    if not layers:
        return result, []
    reference = channel_means(fp32, {layer.reference: layer.axis for layer in layers}, samples)
    done: list[BiasCorrection] = []
    run = StepwiseRun(result, samples)
    for index, layer in enumerate(layers):
        node, output = layer.node, layer.node.output[0]
        if progress is not None:
            progress(f"bias correction: layer {index + 1}/{len(layers)} '{node.name}'")
        shift = _measured(run, output, layer.axis) - reference[layer.reference]
        shift = shift - layer.offset
        added = len(node.input) < 3 or not node.input[2]
        if added and node.op_type == "Gemm":
            reason = "a Gemm without a bias"
        else:
            reason = _add_bias(result, node, len(shift)) if added else None
        reason = reason or _shift_bias(result, node, shift)
        if reason:
            logger.debug("%s '%s' not corrected: %s", node.op_type, node.name, reason)
            continue
        run.recompute(node)  # its bias changed: later layers read the corrected output
        done.append(BiasCorrection(node.name, float(np.max(np.abs(shift))), added))
    if done:
        logger.info(
            "bias correction: %d of %d quantized layers corrected (largest mean shift %.3g)",
            len(done),
            len(layers),
            max(c.max_shift for c in done),
        )
    return result, done
