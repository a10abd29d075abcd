"""Static INT8 quantization through ONNX Runtime's own tools: pre-process, calibrate, Q/DQ.

Nothing here re-implements quantization. The three steps wrap ``onnxruntime.quantization``:

1. :func:`preprocess` — ``quant_pre_process`` (ORT's basic graph optimisation and ONNX shape
   inference; symbolic shape inference only if that fails). Failure policy: if pre-processing
   still fails the model is quantized as it is. Every
   node gets a unique name afterwards, because exclusions are by node name.
2. :func:`calibrate` — ORT's ``create_calibrator`` (``minmax``, ``entropy`` or ``percentile``)
   over an :class:`ArrayCalibrationReader`; the result is a
   :class:`~edgec.passes.calibration_table.CalibrationTable` of per-tensor ranges, computed once
   per pre-processed model (twice on the host: plain and equalized) and reused for every
   flavour and every exclusion list the accuracy guard tries.
3. :class:`QuantizeInt8Pass` — ``quantize_static`` in QDQ format with those ranges (through
   ORT's ``calibration_cache_path``, so calibration is not run again), the activation type and
   weight granularity of an :class:`Int8Flavour`, and the nodes to keep in FP32.
4. :func:`~edgec.passes.qdq_hard_sigmoid.fold_hard_sigmoid` — ORT has no integer
   HardSigmoid, so a quantized one runs as ``DequantizeLinear -> float HardSigmoid ->
   QuantizeLinear`` (and HardSwish, which pre-processing turns into ``x * HardSigmoid(x)``,
   the same way): three small kernels each, the cost that keeps INT8 MobileNetV3-style models
   from being faster than FP32. The Q/DQ graph is rewritten so the function becomes integer
   arithmetic ORT fuses.

Two optional steps keep more of the FP32 answers (Nagel et al. 2019, "Data-Free
Quantization"): ``preprocess(model, equalize=True)`` runs
:class:`~edgec.passes.equalize.EqualizeCrossLayerPass` on the pre-processed FP32 model, so the
model is calibrated and quantized with evened-out weight ranges (exact in FP32); an
:class:`Int8Flavour` with ``bias_correction`` has :func:`quantize_model` take each quantized
layer's mean output shift on the calibration inputs out of its bias
(:func:`~edgec.passes.bias_correction.correct_biases`). An :class:`Int8Flavour` with
``equalize`` records that the model was pre-processed that way. An :class:`Int8Flavour` with
``adaround`` has :func:`quantize_model` learn each quantized layer's weight rounding on the
calibration inputs (:func:`~edgec.passes.adaround.round_weights`, Nagel et al. 2020), before
any bias correction.

An :class:`Int8Flavour` with ``fp32_stem`` keeps the *stem* in FP32 (:func:`stem_nodes`): the
first compute layer on the input and the elementwise layers right after it. A stem reads few
channels (3 for an image), so its INT8 kernels gain little while quantizing the input costs a
pass over it; the host search times such flavours like any other.

Bad calibration data (wrong shape, NaN, all samples identical, ranges that come out infinite)
raises :class:`~edgec.errors.BadInputError` with one sentence.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir

from edgec.errors import BadInputError
from edgec.passes.adaround import round_weights
from edgec.passes.bias_correction import correct_biases
from edgec.passes.calibration_data import check_calibration_samples, model_input
from edgec.passes.calibration_table import CalibrationTable
from edgec.passes.equalize import EqualizeCrossLayerPass
from edgec.passes.qdq_hard_sigmoid import fold_hard_sigmoid

logger = logging.getLogger(__name__)

_CALIBRATION_BYTES = 512 << 20

#: The ``--calibration`` methods, ONNX Runtime's calibrators (see :func:`_method`).
CALIBRATION_METHODS: tuple[str, ...] = ("minmax", "entropy", "percentile")
# Ops that carry the arithmetic INT8 is for; the others only pass quantized values along.
COMPUTE_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})


@dataclass(frozen=True)
class Int8Flavour:
    """How a model is quantized: activation type and weight granularity.

    Attributes:
        activations: ``uint8`` (asymmetric u8 activations with s8 weights, "u8s8": what x86
            VNNI/AVX2 integer kernels take) or ``int8`` ("s8s8": ORT's default, what ARM
            dot-product kernels and TensorRT take).
        per_channel: One weight scale per output channel (else one per tensor).
        reduce_range: 7-bit weights, which avoids int16 saturation of ``VPMADDUBSW`` on x86
            CPUs without VNNI.
        symmetric_activations: Zero point 0 for activations (TensorRT requires it).
        fp32_stem: Keep the stem (:func:`stem_nodes`) in FP32.
        equalize: The model was pre-processed with cross-layer equalization
            (``preprocess(model, equalize=True)``); the caller does that, calibration must see
            the equalized model.
        bias_correction: :func:`quantize_model` corrects the biases on calibration inputs.
        adaround: :func:`quantize_model` learns the weights' rounding on calibration inputs
            (:func:`~edgec.passes.adaround.round_weights`), before any bias correction.
    """

    activations: str = "uint8"
    per_channel: bool = True
    reduce_range: bool = False
    symmetric_activations: bool = False
    fp32_stem: bool = False
    equalize: bool = False
    bias_correction: bool = False
    adaround: bool = False

    def __post_init__(self) -> None:
        if self.activations not in ("uint8", "int8"):
            raise ValueError(f"activations must be uint8 or int8, got {self.activations!r}")

    @property
    def name(self) -> str:
        """A short label, e.g. ``u8s8-per-channel``."""
        parts = ["u8s8" if self.activations == "uint8" else "s8s8"]
        parts.append("per-channel" if self.per_channel else "per-tensor")
        if self.reduce_range:
            parts.append("reduce-range")
        if self.symmetric_activations:
            parts.append("symmetric")
        if self.fp32_stem:
            parts.append("fp32-stem")
        if self.equalize:
            parts.append("cle")
        if self.adaround:
            parts.append("adaround")
        if self.bias_correction:
            parts.append("bias-corrected")
        return "-".join(parts)

    def to_json(self) -> dict:
        """The manifest form."""
        return {
            "name": self.name,
            "activations": self.activations,
            "weights": "int8",
            "per_channel": self.per_channel,
            "reduce_range": self.reduce_range,
            "symmetric_activations": self.symmetric_activations,
            "fp32_stem": self.fp32_stem,
            "equalize": self.equalize,
            "bias_correction": self.bias_correction,
            "adaround": self.adaround,
        }


class ArrayCalibrationReader:
    """An ORT ``CalibrationDataReader`` (it has ``get_next``) over an array of samples.

    Attributes:
        input_name: The model input the samples feed.
        samples: Float32 array ``[N, *sample shape]``.
        batch: Samples per ``get_next`` (the model's static batch size).
    """

    def __init__(self, input_name: str, samples: np.ndarray, batch: int = 1):
        self.input_name = input_name
        self.samples = samples
        self.batch = batch
        self._next = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        """The next feed, or ``None`` when the samples are used up."""
        start = self._next
        if start + self.batch > len(self.samples):
            return None
        self._next += self.batch
        return {self.input_name: np.ascontiguousarray(self.samples[start : start + self.batch])}

    def __iter__(self) -> ArrayCalibrationReader:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        feed = self.get_next()
        if feed is None:
            raise StopIteration
        return feed

    def rewind(self) -> None:
        """Start again from the first sample."""
        self._next = 0

    def __len__(self) -> int:
        return len(self.samples) // self.batch

    def set_range(self, start_index: int, end_index: int) -> None:
        """Restrict to samples ``[start_index, end_index)`` (ORT's strided calibration)."""
        self.samples = self.samples[start_index:end_index]
        self._next = 0


def name_nodes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Give every unnamed (or duplicate-named) node a unique name, in place; return it."""
    seen: set[str] = set()
    for index, node in enumerate(model.graph.node):
        name = node.name or f"{node.op_type}_{index}"
        while name in seen:
            name = f"{name}_{index}"
        node.name = name
        seen.add(name)
    return model


def preprocess(
    model: onnx.ModelProto, equalize: bool = False, relu6_as_relu: bool = False
) -> onnx.ModelProto:
    """ORT's quantization pre-processing of a copy; the model as it is when that fails.

    Args:
        model: The FP32 model (not changed).
        equalize: Then run cross-layer equalization
            (:class:`~edgec.passes.equalize.EqualizeCrossLayerPass`) on it: after ORT's
            pre-processing, which folds BatchNormalization into Convs, so more Conv pairs meet.
        relu6_as_relu: With ``equalize``, let it replace ReLU6 by ReLU in the pairs it
            equalizes (the paper's recipe for MobileNetV2; changes FP32 outputs, so judge the
            result against the original model).
    """
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory(prefix="edgec-preprocess-") as tmp:
        # A path, not the proto: given a ModelProto, quant_pre_process rewrites it in place
        # to point at external data files in its own temporary directory.
        source, out = Path(tmp) / "in.onnx", Path(tmp) / "pre.onnx"
        onnx.save_model(model, source)
        # edgec's models have static shapes (the loader fixes them), so ONNX shape inference
        # suffices; symbolic inference (slow: sympy) is the fallback.
        for skip_symbolic in (True, False):
            try:
                with _quiet():
                    quant_pre_process(source, out, skip_symbolic_shape=skip_symbolic)
                return name_nodes(
                    _equalized(onnx.load(out), relu6_as_relu) if equalize else onnx.load(out)
                )
            except Exception as err:  # ORT's pre-processing raises many unrelated types
                logger.debug(
                    "quant_pre_process failed (skip_symbolic_shape=%s): %s", skip_symbolic, err
                )
    logger.info("quantization pre-processing failed; quantizing the model as it is")
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return name_nodes(_equalized(copy, relu6_as_relu) if equalize else copy)


def _equalized(model: onnx.ModelProto, relu6_as_relu: bool) -> onnx.ModelProto:
    ir_model = ir.serde.deserialize_model(model)
    EqualizeCrossLayerPass(relu6_as_relu=relu6_as_relu)(ir_model)
    return ir.serde.serialize_model(ir_model)


@contextlib.contextmanager
def _quiet():
    """Keep ORT's calibration prints and root-logger warnings off the user's terminal."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.ERROR))
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.setLevel(level)


def _method(name: str):
    from onnxruntime.quantization import CalibrationMethod

    try:
        return {
            "minmax": CalibrationMethod.MinMax,
            "entropy": CalibrationMethod.Entropy,
            "percentile": CalibrationMethod.Percentile,
        }[name]
    except KeyError:
        raise BadInputError(
            f"Unknown calibration method '{name}'; use one of {', '.join(CALIBRATION_METHODS)}."
        ) from None


def _op_types() -> list[str]:
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    return sorted(set(QLinearOpsRegistry) | set(QDQRegistry))


def _chunk_samples(model: onnx.ModelProto, batch: int) -> int:
    """Samples per calibration chunk so the activations held stay within ~512 MB."""
    elements = 0
    for value in [*model.graph.value_info, *model.graph.output]:
        dims = value.type.tensor_type.shape.dim
        if dims and all(d.HasField("dim_value") for d in dims):
            elements += int(np.prod([d.dim_value for d in dims]))
    per_batch = max(elements * 4, 1)
    return max(1, _CALIBRATION_BYTES // per_batch) * batch


def calibrate(
    model: onnx.ModelProto, samples: np.ndarray, method: str = "minmax", data_sha256: str = ""
) -> CalibrationTable:
    """Measure per-tensor activation ranges of a pre-processed model with ORT's calibrators.

    Args:
        model: The model after :func:`preprocess`.
        samples: Calibration inputs, ``[N, *input shape after batch]``.
        method: ``minmax``, ``entropy`` or ``percentile`` (ORT's defaults for each: 128 bins
            for entropy, the 99.999th percentile over 2048 bins). Samples go through ORT in
            chunks that keep ~512 MB of activations in memory; ORT merges the chunks (exactly
            for ``minmax``; the histogram methods re-bin as the range grows, so for a model
            big enough to need several chunks their ranges can differ slightly from one pass).
        data_sha256: Recorded in the table.

    Raises:
        BadInputError: Bad samples, or calibration produced a non-finite range.
    """
    from onnxruntime.quantization.calibrate import create_calibrator

    ort_method = _method(method)
    samples = check_calibration_samples(model, samples)
    value = model_input(model)
    first = value.type.tensor_type.shape.dim[0]
    batch = first.dim_value if first.HasField("dim_value") and first.dim_value > 0 else 1
    usable = (len(samples) // batch) * batch
    chunk = _chunk_samples(model, batch)
    with tempfile.TemporaryDirectory(prefix="edgec-calibrate-") as tmp:
        path = Path(tmp) / "model.onnx"
        onnx.save_model(model, path)
        with _quiet():
            calibrator = create_calibrator(
                path,
                _op_types(),
                augmented_model_path=str(Path(tmp) / "augmented.onnx"),
                calibrate_method=ort_method,
                # Ranges stay asymmetric; a flavour that needs symmetric ones asks the quantizer.
                extra_options={"symmetric": False},
            )
            # ORT's calibrators keep every intermediate output of a collect_data call in
            # memory (the histogram ones for all samples); chunks bound that, and both kinds
            # merge what successive calls collect.
            for start in range(0, usable, chunk):
                stop = min(start + chunk, usable)
                calibrator.collect_data(
                    ArrayCalibrationReader(value.name, samples[start:stop], batch)
                )
            tensors = calibrator.compute_data()
            del calibrator
    ranges: dict[str, tuple[float, float]] = {}
    for name, data in tensors.items():
        low, high = (float(np.asarray(v).item()) for v in data.range_value)
        if not (np.isfinite(low) and np.isfinite(high)):
            raise BadInputError(
                f"Calibration gave tensor '{name}' a non-finite range: the calibration data "
                "drives the model to overflow; check that it is scaled like the training data."
            )
        ranges[name] = (low, high)
    logger.info("calibrated %d tensors with %s on %d samples", len(ranges), method, usable)
    return CalibrationTable(method=method, samples=usable, ranges=ranges, data_sha256=data_sha256)


def _tensors_data(table: CalibrationTable):
    from onnxruntime.quantization.calibrate import TensorData, TensorsData

    data = {
        name: TensorData(lowest=np.float32(low), highest=np.float32(high))
        for name, (low, high) in table.ranges.items()
    }
    return TensorsData(_method(table.method), data)


class QuantizeInt8Pass(ir.passes.FunctionalPass):
    """Quantize a pre-processed model to QDQ INT8 with ``onnxruntime.quantization.quantize_static``.

    The ranges come from a calibration table (no calibration runs here). ``modified`` is
    whether any QuantizeLinear was inserted: a model with nothing quantizable comes back
    unchanged. Failure policy: an error inside ORT's quantizer is raised as it is (a bug).

    Attributes:
        calibration: Per-tensor ranges from :func:`calibrate` on the same model.
        flavour: Activation type and weight granularity.
        nodes_to_exclude: Node names kept in FP32.
        op_types: Op types to quantize (``None``: every op ORT can quantize).
        samples: Calibration inputs, for a flavour with ``bias_correction``.
    """

    def __init__(
        self,
        calibration: CalibrationTable,
        flavour: Int8Flavour = Int8Flavour(),
        nodes_to_exclude: Iterable[str] = (),
        op_types: Sequence[str] | None = None,
        samples: np.ndarray | None = None,
    ):
        super().__init__()
        self.samples = samples
        self.calibration = calibration
        self.flavour = flavour
        self.nodes_to_exclude = tuple(nodes_to_exclude)
        self.op_types = tuple(op_types) if op_types is not None else None

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        """Return the quantized copy of ``model``."""
        proto = ir.serde.serialize_model(model)
        quantized = quantize_model(
            proto,
            self.calibration,
            self.flavour,
            self.nodes_to_exclude,
            self.op_types,
            self.samples,
        )
        modified = any(n.op_type == "QuantizeLinear" for n in quantized.graph.node)
        # A functional pass returns a new model even when nothing was quantized.
        return ir.passes.PassResult(ir.serde.deserialize_model(quantized), modified=modified)


def stem_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of the model's stem: its first compute node (:data:`COMPUTE_OPS`) that reads the
    input (through non-compute nodes only), and the non-compute nodes after it that read
    nothing but the stem's outputs and constants (activations, pooling), up to the next
    compute node. Empty when no compute node reads the input that way.
    """
    graph = model.graph
    constants = {init.name for init in graph.initializer}
    from_input = {i.name for i in graph.input if i.name not in constants}
    stem: list[str] = []
    produced: set[str] = set()
    for node in graph.node:
        inputs = [name for name in node.input if name and name not in constants]
        if not stem:
            if not any(name in from_input for name in inputs):
                continue
            if node.op_type in COMPUTE_OPS:
                stem.append(node.name)
                produced.update(node.output)
            else:  # a Transpose, Cast or Pad on the way to the first layer
                from_input.update(node.output)
        elif node.op_type not in COMPUTE_OPS and inputs and set(inputs) <= produced:
            stem.append(node.name)
            produced.update(node.output)
        elif node.op_type in COMPUTE_OPS and set(inputs) & produced:
            break
    return stem


def quantize_model(
    model: onnx.ModelProto,
    calibration: CalibrationTable,
    flavour: Int8Flavour = Int8Flavour(),
    nodes_to_exclude: Iterable[str] = (),
    op_types: Sequence[str] | None = None,
    samples: np.ndarray | None = None,
    progress: Callable[[str], None] | None = None,
    adaround_seconds: float | None = None,
) -> onnx.ModelProto:
    """The proto-level form of :class:`QuantizeInt8Pass`: QDQ INT8 copy of ``model``.

    ``samples`` (calibration inputs) are needed, and only used, when ``flavour`` has
    ``bias_correction`` or ``adaround``; ``progress`` gets their progress lines;
    ``adaround_seconds`` is AdaRound's time (``None``: its default; 0: only the rounding
    learned by an earlier call, see :func:`~edgec.passes.adaround.round_weights`).

    Raises:
        ValueError: ``flavour.bias_correction`` or ``adaround`` without ``samples`` (a bug in
            the caller).
    """
    if (flavour.bias_correction or flavour.adaround) and samples is None:
        raise ValueError(f"flavour {flavour.name} needs the calibration samples")
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import save_tensors_data

    activation = QuantType.QUInt8 if flavour.activations == "uint8" else QuantType.QInt8
    extra = {"ActivationSymmetric": flavour.symmetric_activations, "WeightSymmetric": True}
    if flavour.fp32_stem:
        nodes_to_exclude = [*nodes_to_exclude, *stem_nodes(model)]
    excluded = sorted(set(nodes_to_exclude))
    with tempfile.TemporaryDirectory(prefix="edgec-quantize-") as tmp:
        cache = Path(tmp) / "ranges.json"
        save_tensors_data(_tensors_data(calibration), cache)
        out = Path(tmp) / "int8.onnx"
        with _quiet():
            quantize_static(
                model,
                out,
                None,
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=list(op_types) if op_types is not None else None,
                per_channel=flavour.per_channel,
                reduce_range=flavour.reduce_range,
                activation_type=activation,
                weight_type=QuantType.QInt8,
                nodes_to_exclude=excluded,
                calibrate_method=_method(calibration.method),
                extra_options=extra,
                calibration_cache_path=cache,
            )
        result = onnx.load(out)
    # TensorRT-style symmetric activations need zero point 0, which the folded grid lacks.
    folded = 0 if flavour.symmetric_activations else fold_hard_sigmoid(result)
    try:  # shapes for the cost model and MAC counts; quantize_static drops intermediate ones
        result = onnx.shape_inference.infer_shapes(result, strict_mode=False)
    except Exception as err:  # onnx raises several types; shapes are optional here
        logger.debug("shape inference on the quantized model failed: %s", err)
    if flavour.adaround:
        result, _ = round_weights(
            model,
            result,
            samples,
            reduce_range=flavour.reduce_range,
            seconds=adaround_seconds,
            progress=progress,
        )
    if flavour.bias_correction:
        result, _ = correct_biases(model, result, samples, progress=progress)
    logger.info(
        "quantized (%s): %d Q/DQ nodes, %d nodes kept in FP32, %d HardSigmoid folded",
        flavour.name,
        sum(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in result.graph.node),
        len(excluded),
        folded,
    )
    return result
