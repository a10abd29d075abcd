"""Named pass pipelines: a small registry of functions that return a sequence of passes.

Pipelines are data (``get_pipeline(name)``), never ``if target == ...`` chains. Each pipeline
runs under :func:`run_pipeline`, which repeats it to a fixed point (``early_stop``) and keeps
instrumentation (timing, node counts, IR dumps) outside the passes themselves.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import onnx_ir as ir
import onnx_ir.passes.common as common
from onnxscript import rewriter
from onnxscript.optimizer import _constant_folding

logger = logging.getLogger(__name__)

# Constant folding limits (elements): folding never materialises a tensor bigger than
# OUTPUT_LIMIT, so a ConstantOfShape that expands to a 100 MB weight stays a one-node
# recipe instead of bloating the file.
INPUT_LIMIT = 8192
OUTPUT_LIMIT = 1 << 20

PipelineFactory = Callable[[], Sequence[ir.passes.PassBase]]
_REGISTRY: dict[str, PipelineFactory] = {}


def register_pipeline(name: str) -> Callable[[PipelineFactory], PipelineFactory]:
    """Decorator: register a pipeline factory under ``name``."""

    def decorate(factory: PipelineFactory) -> PipelineFactory:
        _REGISTRY[name] = factory
        return factory

    return decorate


def pipeline_names() -> list[str]:
    """Registered pipeline names."""
    return sorted(_REGISTRY)


def get_pipeline(name: str) -> Sequence[ir.passes.PassBase]:
    """The passes of pipeline ``name``, freshly constructed."""
    if name not in _REGISTRY:
        raise KeyError(f"Unknown pipeline '{name}'; known: {', '.join(pipeline_names())}")
    return _REGISTRY[name]()


@register_pipeline("canonical")
def canonical_pipeline() -> Sequence[ir.passes.PassBase]:
    """Fold constants, apply onnxscript's default rewrite rules, remove dead code."""
    return [
        _constant_folding.FoldConstantsPass(
            shape_inference=True, input_size_limit=INPUT_LIMIT, output_size_limit=OUTPUT_LIMIT
        ),
        rewriter.RewritePass(rewriter._DEFAULT_REWRITE_RULES),
        common.IdentityEliminationPass(),
        common.RemoveUnusedNodesPass(),
        common.RemoveUnusedFunctionsPass(),
        common.RemoveUnusedOpsetsPass(),
    ]


@register_pipeline("finalize")
def finalize_pipeline() -> Sequence[ir.passes.PassBase]:
    """One-shot clean-up before writing: constants to initializers, dedupe, CSE, names."""
    return [
        common.LiftConstantsToInitializersPass(lift_all_constants=False, size_limit=16),
        common.DeduplicateInitializersPass(),
        common.CommonSubexpressionEliminationPass(),
        common.RemoveUnusedNodesPass(),
        common.OutputFixPass(),
        common.NameFixPass(),
    ]


def run_pipeline(model: ir.Model, name: str, max_steps: int = 4) -> bool:
    """Run pipeline ``name`` on ``model`` in place until nothing changes; return ``modified``."""
    manager = ir.passes.PassManager(get_pipeline(name), steps=max_steps, early_stop=True)
    before = len(list(model.graph.all_nodes()))
    result = manager(model)
    after = len(list(result.model.graph.all_nodes()))
    logger.info("pipeline %s: %d -> %d nodes", name, before, after)
    return result.modified
