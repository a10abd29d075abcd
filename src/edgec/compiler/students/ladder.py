"""The student ladder: how many students, and how small, as shares of the teacher's MACs.

``--students 0.1,0.3`` sets the MAC ratios; ``--students none`` asks for none. By default
(``auto``) the ladder has two rungs: ``small`` at :data:`SMALL_RATIO` of the teacher's MACs,
the student meant to keep the teacher's accuracy, and ``tiny``, sized from the target so that
it fits :data:`TINY_BUDGET_SHARE` of the latency budget on the device by the cost model:

    latency(r) ~= fixed + r * variable

where ``fixed`` is the per-op overhead the descriptor's cost model charges (it does not shrink
with pruning) and ``variable`` the rest of the teacher's estimated latency (compute and memory
traffic, which shrink roughly with the MACs). The tiny ratio is clamped to
[:data:`MIN_RATIO`, :data:`TINY_RATIO`]; with no budget it is :data:`TINY_RATIO`.

Rungs are named by size (``tiny``, ``small``, ``medium``, ``large``; ``student-<i>`` beyond
four) and listed smallest first, the cascade's order. This module needs no torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx

from edgec.compiler.planning.cost_model import layer_costs
from edgec.targets.descriptor import Target

SMALL_RATIO = 0.3
TINY_RATIO = 0.1
MIN_RATIO = 0.02
TINY_BUDGET_SHARE = 0.2
_NAMES = ("tiny", "small", "medium", "large")


@dataclass(frozen=True)
class Rung:
    """One student to derive.

    Attributes:
        name: Stage name.
        mac_ratio: Target share of the teacher's MACs.
    """

    name: str
    mac_ratio: float


@dataclass(frozen=True)
class Ladder:
    """The students to derive and why they have these sizes.

    Attributes:
        rungs: Smallest first.
        sized_by: One sentence on where the ratios came from.
    """

    rungs: tuple[Rung, ...]
    sized_by: str

    def to_json(self) -> dict:
        """The manifest form."""
        return {
            "ratios": [r.mac_ratio for r in self.rungs],
            "names": [r.name for r in self.rungs],
            "sized_by": self.sized_by,
        }


def stage_names(count: int) -> list[str]:
    """Names for ``count`` students, smallest first."""
    if count <= len(_NAMES):
        return list(_NAMES[:count])
    return [f"student-{i}" for i in range(1, count + 1)]


def _ladder(ratios: list[float], sized_by: str) -> Ladder:
    ratios = sorted(ratios)
    return Ladder(
        tuple(Rung(n, round(r, 4)) for n, r in zip(stage_names(len(ratios)), ratios, strict=True)),
        sized_by,
    )


def plan_ladder(
    requested: str | tuple[float, ...],
    teacher: onnx.ModelProto,
    target: Target,
    backend: str,
    precision: str,
    budget_ms: float | None,
) -> Ladder:
    """The ladder for ``--students`` (``auto``, ``none`` or explicit MAC ratios)."""
    if requested == "none":
        return Ladder((), "--students none")
    if not isinstance(requested, str):
        return _ladder(list(requested), "--students")
    costs = layer_costs(teacher, target, backend, precision)
    total = sum(c.latency_ms for c in costs)
    fixed = len(costs) * target.cost_model.op_overhead_us / 1e3
    variable = max(total - fixed, 1e-9)
    if budget_ms is None:
        return _ladder(
            [TINY_RATIO, SMALL_RATIO],
            f"default ratios (no --budget-ms to size the tiny student from); the teacher is "
            f"estimated at {total:.3f} ms on {target.name}",
        )
    share = TINY_BUDGET_SHARE * budget_ms
    wanted = (share - fixed) / variable
    tiny = min(max(wanted, MIN_RATIO), TINY_RATIO)
    why = (
        f"cost model: the teacher is estimated at {total:.3f} ms on {target.name} "
        f"({fixed:.3f} ms of it per-op overhead); the tiny student aims at "
        f"{100 * TINY_BUDGET_SHARE:.0f}% of the {budget_ms:g} ms budget ({share:.3f} ms)"
    )
    if wanted < MIN_RATIO:
        why += f", which even {100 * MIN_RATIO:.0f}% of the MACs does not reach"
    elif wanted > TINY_RATIO:
        why += f", which {100 * TINY_RATIO:.0f}% of the MACs (the largest tiny student) meets"
    else:
        why += f": {100 * tiny:.1f}% of the MACs"
    return _ladder([tiny, SMALL_RATIO], why)
