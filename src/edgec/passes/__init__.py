"""Graph passes on ``onnx_ir`` and the named pipelines that compose them.

Public API: :func:`get_pipeline`, :func:`run_pipeline`, :func:`pipeline_names`,
:func:`register_pipeline`. The canonical pipeline's passes live in their own modules:
``fold_constants.FoldConstantsPass``, ``eliminate.EliminateDropoutPass`` /
``EliminateNoOpsPass``, ``sum_to_add.ReplaceSumWithAddPass``,
``fold_batchnorm.FoldBatchNormPass``, ``fold_affine.FoldAffinePass``,
``fold_pad.FoldPadIntoConvPass``, ``annotate_fusions.AnnotateFusionsPass``; the pre-processing
kernel is prepended by ``fuse_preprocess.FusePreprocessPass``; ``instrument.PassInstrument``
times passes and dumps the IR; ``opset_forms`` checks every node a rewrite or the constant folder
emits against the model's opset (older spelling where one exists, else the rewrite is skipped).
INT8: ``quantize.QuantizeInt8Pass`` with ``quantize.preprocess``
and ``quantize.calibrate`` (ONNX Runtime's tools), ``calibration_table.CalibrationTable`` (JSON
and the TensorRT 8 calibration cache).
"""

from __future__ import annotations

from edgec.passes.pipelines import get_pipeline, pipeline_names, register_pipeline, run_pipeline

__all__ = ["get_pipeline", "pipeline_names", "register_pipeline", "run_pipeline"]
