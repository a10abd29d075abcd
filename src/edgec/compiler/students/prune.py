"""Structured pruning of a converted teacher to a target MAC ratio, with torch-pruning.

torch-pruning's dependency graph traces the module once and groups every coupled channel:
the two sides of a residual addition, the slices of a concatenation, the in- and out-channels
of a depthwise convolution, the per-channel constants of an :class:`OnnxModule`. Removing a
channel from a group removes it everywhere, so the pruned network stays well formed.

Channels are ranked by the L2 norm of their group's weights (``GroupMagnitudeImportance``) and
every layer loses the same share (local, uniform pruning). MACs fall roughly with the square of
the kept share, so :func:`prune_to_mac_ratio` searches the pruning ratio by bisection on a copy
of the model until the MACs land just under the target (within :data:`MAC_TOLERANCE`).

The classifier head (the layers that produce the graph's outputs) keeps its output channels —
the classes — and the input layer keeps its input channels — the image's channels — since no
layer's input is ever pruned without its producer; no layer is removed outright (every group
keeps at least one channel). A network whose MACs cannot reach the target (for example when the
unprunable head dominates) is pruned as far as it goes and the achieved ratio is reported.
"""

from __future__ import annotations

import copy
import logging
import warnings
from dataclasses import dataclass

import torch
import torch_pruning as tp

from edgec.compiler.students.context import OnnxModule

logger = logging.getLogger(__name__)

MAC_TOLERANCE = 0.03
MAX_PRUNING_RATIO = 0.98
SEARCH_STEPS = 12


class PruningError(Exception):
    """Pruning produced a network that does not run or changes the output shape."""


@dataclass(frozen=True)
class PruneResult:
    """A pruned copy of the teacher.

    Attributes:
        module: The pruned module (a new object; the input module is untouched).
        pruning_ratio: Share of channels removed from every prunable group.
        macs_before: Teacher MACs (torch-pruning's count, convolutions and linears).
        macs_after: Pruned MACs, same count.
        params_before: Teacher parameters.
        params_after: Pruned parameters.
    """

    module: OnnxModule
    pruning_ratio: float
    macs_before: int
    macs_after: int
    params_before: int
    params_after: int

    @property
    def mac_ratio(self) -> float:
        """Achieved share of the teacher's MACs."""
        return self.macs_after / self.macs_before if self.macs_before else 1.0


def count_macs(module: torch.nn.Module, example: torch.Tensor) -> tuple[int, int]:
    """MACs and parameters of ``module`` on ``example`` (torch-pruning's counter)."""
    module.eval()
    with torch.no_grad():
        macs, params = tp.utils.count_ops_and_params(module, example)
    return int(macs), int(params)


def prune_once(module: OnnxModule, example: torch.Tensor, pruning_ratio: float) -> OnnxModule:
    """A copy of ``module`` with ``pruning_ratio`` of every prunable group's channels removed.

    Failure policy: an error inside torch-pruning (a graph it cannot group, such as a channel
    shuffle) and a pruned copy that does not run both raise :class:`PruningError`.

    Raises:
        PruningError: Pruning failed, or the pruned copy does not run or gives another
            output shape.
    """
    pruned = copy.deepcopy(module).eval()
    with torch.no_grad():
        reference = pruned(example)
    if pruning_ratio <= 0:
        return pruned
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch-pruning warns about each unwrapped constant
            pruner = tp.pruner.MetaPruner(
                pruned,
                example,
                importance=tp.importance.GroupMagnitudeImportance(p=2),
                pruning_ratio=pruning_ratio,
                ignored_layers=pruned.head_layers(),
                unwrapped_parameters=pruned.unwrapped_parameters(),
            )
            pruner.step()
    except (RuntimeError, IndexError, ValueError, AssertionError) as err:
        # torch-pruning's failure modes on graphs it cannot group (e.g. channel shuffles).
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise PruningError(f"torch-pruning cannot prune this network ({first})") from None
    try:
        with torch.no_grad():
            output = pruned(example)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise PruningError(f"the pruned network does not run ({first})") from None
    if output.shape != reference.shape:
        raise PruningError(
            f"pruning changed the output shape from {list(reference.shape)} to {list(output.shape)}"
        )
    return pruned


def prune_to_mac_ratio(module: OnnxModule, example: torch.Tensor, mac_ratio: float) -> PruneResult:
    """Prune a copy of ``module`` so its MACs are at most ``mac_ratio`` of the original's.

    Args:
        module: The converted teacher (left untouched).
        example: An input of the teacher's shape.
        mac_ratio: Target share of the teacher's MACs, in (0, 1).

    Raises:
        PruningError: The pruned network does not run.
    """
    macs_before, params_before = count_macs(module, example)
    low, high = 0.0, MAX_PRUNING_RATIO
    guess = min(max(1.0 - mac_ratio**0.5, 0.01), MAX_PRUNING_RATIO)
    best: tuple[float, OnnxModule, int, int] | None = None
    smallest: tuple[float, OnnxModule, int, int] | None = None
    for _ in range(SEARCH_STEPS):
        candidate = prune_once(module, example, guess)
        macs, params = count_macs(candidate, example)
        ratio = macs / macs_before
        logger.debug("pruning ratio %.4f -> MAC ratio %.4f", guess, ratio)
        if smallest is None or macs < smallest[2]:
            smallest = (guess, candidate, macs, params)
        if ratio <= mac_ratio:
            if best is None or macs > best[2]:
                best = (guess, candidate, macs, params)
            if ratio >= mac_ratio * (1 - MAC_TOLERANCE):
                break
            high = guess
        else:
            low = guess
        guess = (low + high) / 2
        if high - low < 1e-3:
            break
    chosen = best or smallest
    logger.info(
        "pruned to %.1f%% of the teacher's MACs (target %.1f%%, channel ratio %.3f)",
        100 * chosen[2] / macs_before,
        100 * mac_ratio,
        chosen[0],
    )
    return PruneResult(chosen[1], chosen[0], macs_before, chosen[2], params_before, chosen[3])
