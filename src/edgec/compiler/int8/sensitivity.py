"""Per-layer INT8 sensitivity: which layers should stay FP32 (``edgec inspect --sensitivity``).

For every compute layer (Conv, ConvTranspose, Gemm, MatMul) of the pre-processed FP32 model,
two Q/DQ models are built from one calibration and run on held-out inputs:

* **alone**: only this layer quantized (every other node excluded): the error this layer
  adds by itself, as the SQNR of the model's first output against FP32;
* **kept FP32**: the whole model quantized except this layer: how much keeping it in FP32
  would recover, as the SQNR gain over the fully quantized model.

Layers are sorted worst first (lowest SQNR alone; ties: largest gain). The cost is two
quantizations and two runs of the held-out inputs per layer, so a large model takes minutes.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from edgec.compiler.int8.accuracy_guard import sqnr_db
from edgec.errors import BadInputError
from edgec.passes.calibration_data import check_calibration_samples
from edgec.passes.calibration_table import CalibrationTable
from edgec.passes.quantize import (
    COMPUTE_OPS,
    Int8Flavour,
    calibrate,
    preprocess,
    quantize_model,
)

logger = logging.getLogger(__name__)

#: Calibration inputs (training split) and held-out inputs (validation split) it uses.
CALIB_SAMPLES = 100
HELD_OUT_SAMPLES = 200


@dataclass(frozen=True)
class LayerSensitivity:
    """One compute layer's share of the INT8 output error.

    Attributes:
        node: The node name.
        op: Its op type.
        alone_sqnr_db: Output SQNR against FP32 with only this layer quantized.
        kept_fp32_sqnr_db: Output SQNR with every layer but this one quantized.
        gain_db: ``kept_fp32_sqnr_db`` minus the fully quantized model's SQNR.
    """

    node: str
    op: str
    alone_sqnr_db: float
    kept_fp32_sqnr_db: float
    gain_db: float

    def to_json(self) -> dict:
        """The JSON form (dB rounded to 0.01)."""
        return {
            "node": self.node,
            "op": self.op,
            "alone_sqnr_db": round(self.alone_sqnr_db, 2),
            "kept_fp32_sqnr_db": round(self.kept_fp32_sqnr_db, 2),
            "gain_db": round(self.gain_db, 2),
        }


@dataclass(frozen=True)
class SensitivityReport:
    """The sensitivity of every compute layer, worst first.

    Attributes:
        flavour: The INT8 flavour the layers were quantized with.
        full_sqnr_db: Output SQNR of the fully quantized model.
        samples: Held-out inputs the SQNRs are measured on.
        layers: One entry per compute layer, worst first.
    """

    flavour: Int8Flavour
    full_sqnr_db: float
    samples: int
    layers: list[LayerSensitivity]

    def to_json(self) -> dict:
        """The JSON form."""
        return {
            "flavour": self.flavour.name,
            "full_sqnr_db": round(self.full_sqnr_db, 2),
            "samples": self.samples,
            "layers": [layer.to_json() for layer in self.layers],
        }


def _outputs(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    """The model's first output on ``x``, run in batches of its static batch size."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    spec = session.get_inputs()[0]
    batch = spec.shape[0] if isinstance(spec.shape[0], int) and spec.shape[0] > 0 else 1
    usable = len(x) // batch * batch
    return np.concatenate(
        [
            session.run(None, {spec.name: np.ascontiguousarray(x[i : i + batch])})[0]
            for i in range(0, usable, batch)
        ]
    )


def layer_sensitivity(
    model: onnx.ModelProto,
    calibration: CalibrationTable,
    held_out: np.ndarray,
    flavour: Int8Flavour,
) -> SensitivityReport:
    """Measure every compute layer's INT8 sensitivity (see the module docstring).

    Args:
        model: The pre-processed FP32 model (:func:`~edgec.passes.quantize.preprocess`).
        calibration: Its ranges (:func:`~edgec.passes.quantize.calibrate`).
        held_out: Inputs to measure on (not the calibration inputs).
        flavour: The INT8 flavour (its ``bias_correction`` is not applied).
    """
    flavour = dataclasses.replace(flavour, bias_correction=False)
    reference = _outputs(model, held_out)
    names = [n.name for n in model.graph.node]
    layers = [n for n in model.graph.node if n.op_type in COMPUTE_OPS]
    full = sqnr_db(reference, _outputs(quantize_model(model, calibration, flavour), held_out))
    results = []
    for node in layers:
        others = [name for name in names if name != node.name]
        alone = quantize_model(model, calibration, flavour, others)
        kept = quantize_model(model, calibration, flavour, [node.name])
        alone_db = sqnr_db(reference, _outputs(alone, held_out))
        kept_db = sqnr_db(reference, _outputs(kept, held_out))
        results.append(LayerSensitivity(node.name, node.op_type, alone_db, kept_db, kept_db - full))
    results.sort(key=lambda r: (r.alone_sqnr_db, -r.gain_db))
    logger.info(
        "sensitivity: %d layers, full INT8 %.1f dB, worst alone: %s",
        len(results),
        full,
        results[0].node if results else "-",
    )
    return SensitivityReport(flavour, full, len(reference), results)


def model_sensitivity(
    path: Path,
    data: str,
    target: str = "host",
    input_shapes: dict[str, tuple[int, ...]] | None = None,
    calib_samples: int = CALIB_SAMPLES,
    held_out_samples: int = HELD_OUT_SAMPLES,
) -> SensitivityReport:
    """The sensitivity report of the model at ``path`` (``edgec inspect --sensitivity``).

    The model is loaded and canonicalized as ``edgec compile`` does, pre-processed, calibrated
    on the first ``calib_samples`` training inputs of ``data`` and measured on the first
    ``held_out_samples`` validation inputs, with the flavour ``edgec inspect --precision
    int8`` reads it with (the first host candidate, or the target's rule flavour).

    Raises:
        BadInputError: A bad model, target, shape or data source.
    """
    from edgec.compiler.canonicalize import canonicalize
    from edgec.compiler.int8.precision import host_candidates, rule_flavour
    from edgec.compiler.loading import load_model
    from edgec.data import load_dataset
    from edgec.targets import load_target

    resolved = load_target(target)
    loaded = load_model(Path(path), input_shapes or {})
    if {n.op_type for n in loaded.proto.graph.node} & {"QuantizeLinear", "QLinearConv"}:
        raise BadInputError(
            f"{Path(path).name} is already quantized; --sensitivity needs the FP32 model."
        )
    dataset = load_dataset(data)
    model = preprocess(canonicalize(loaded.proto))
    samples = check_calibration_samples(model, dataset.x_train[:calib_samples])
    held_out = check_calibration_samples(model, dataset.x_val[:held_out_samples])
    backend = resolved.backends[0]
    flavour = host_candidates(resolved)[0] if resolved.is_host else rule_flavour(resolved, backend)
    return layer_sensitivity(model, calibrate(model, samples), held_out, flavour)
