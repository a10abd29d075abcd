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
from onnxscript.rewriter.rules.common import _fuse_batchnorm, _fuse_pad_into_conv, _no_op

from edgec.passes.annotate_fusions import AnnotateFusionsPass
from edgec.passes.eliminate import EliminateDropoutPass, EliminateNoOpsPass
from edgec.passes.fold_affine import FoldAffinePass
from edgec.passes.fold_batchnorm import FoldBatchNormPass
from edgec.passes.fold_constants import INPUT_LIMIT, OUTPUT_LIMIT, FoldConstantsPass
from edgec.passes.fold_pad import FoldPadIntoConvPass
from edgec.passes.instrument import PassInstrument, count_nodes
from edgec.passes.opset_forms import guard_rules
from edgec.passes.sum_to_add import ReplaceSumWithAddPass

logger = logging.getLogger(__name__)

# Constant folding limits (elements) live in edgec.passes.fold_constants; re-exported here.
__all__ = ["INPUT_LIMIT", "OUTPUT_LIMIT", "get_pipeline", "pipeline_names", "run_pipeline"]

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


# onnxscript's default rules minus those our own passes own (they add refusals, logging and
# opset < 11 support): BatchNormalization folding, Pad folding and the no-op/Dropout rules.
_OWNED_RULES = {*_fuse_batchnorm.rules, *_fuse_pad_into_conv.rules, *_no_op.rules}


def _general_rules() -> list:
    # Guarded: a rule whose replacement is invalid in the model's opset (Gemm without C before
    # opset 11) is skipped there, see edgec.passes.opset_forms.
    return guard_rules(
        [rule for rule in rewriter._DEFAULT_REWRITE_RULES if rule not in _OWNED_RULES]
    )


@register_pipeline("canonical")
def canonical_pipeline() -> Sequence[ir.passes.PassBase]:
    """The model every backend sees: constants folded, no-ops gone, BN and Pad folded.

    Order matters only for speed (the pipeline runs to a fixed point): constants first so
    later passes see constant weights and static shapes; eliminations before the folds so
    patterns are adjacent; general onnxscript rules; dead-code removal; annotations last.
    """
    return [
        FoldConstantsPass(),
        EliminateDropoutPass(),
        EliminateNoOpsPass(),
        ReplaceSumWithAddPass(),
        FoldBatchNormPass(),
        FoldAffinePass(),
        FoldPadIntoConvPass(),
        rewriter.RewritePass(_general_rules()),
        common.IdentityEliminationPass(),
        common.RemoveUnusedNodesPass(),
        common.RemoveUnusedFunctionsPass(),
        common.RemoveUnusedOpsetsPass(),
        AnnotateFusionsPass(),
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


def run_pipeline(
    model: ir.Model, name: str, max_steps: int = 4, instrument: PassInstrument | None = None
) -> bool:
    """Run pipeline ``name`` on ``model`` in place until nothing changes; return ``modified``.

    Args:
        model: The model, changed in place.
        name: A registered pipeline.
        max_steps: Most repetitions of the whole pipeline (it stops at the first repetition
            in which no pass reports a change).
        instrument: Records each pass's time and node counts (and dumps the IR) when given.
    """
    passes = get_pipeline(name)
    if instrument is not None:
        passes = instrument.wrap(name, passes)
    manager = ir.passes.PassManager(passes, steps=max_steps, early_stop=True)
    before = count_nodes(model)
    result = manager(model)
    logger.info("pipeline %s: %d -> %d nodes", name, before, count_nodes(result.model))
    return result.modified
