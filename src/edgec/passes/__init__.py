"""Graph passes on ``onnx_ir`` and the named pipelines that compose them.

Public API: :func:`get_pipeline`, :func:`run_pipeline`, :func:`pipeline_names`,
:func:`register_pipeline`.
"""

from __future__ import annotations

from edgec.passes.pipelines import get_pipeline, pipeline_names, register_pipeline, run_pipeline

__all__ = ["get_pipeline", "pipeline_names", "register_pipeline", "run_pipeline"]
