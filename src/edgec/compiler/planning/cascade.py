"""The cascade planner: confidence thresholds and the offload policy, as pure functions.

Stages run in order; stage ``k`` answers a frame when its confidence is at least its threshold
``θ_k`` (the last stage always answers). Otherwise the frame goes on to stage ``k + 1`` — but
only if the time left covers it. The generated runtime applies exactly this rule::

    forward from k  iff  conf_k < θ_k  and  elapsed + cost_k <= budget
    cost_k = latency_{k+1} at the percentile                 (next stage on the device)
    cost_k = rtt + overhead + payload · 8 / bandwidth + latency_{k+1} at p50 + margin
                                                                  (next stage on the gateway)

The link's part is the request price both planners share
(:class:`edgec.compiler.planning.link.LinkModel`).

A frame sent to the gateway waits at most until ``fallback_margin_ms`` before the budget runs
out (the runtime's request timeout); a late answer is dropped and the device answers with its
own result, so a late gateway costs time but never a frame. That is why the gateway step is
budgeted at the next stage's median: its tail is cut off by the timeout, while a device stage,
once started, cannot be interrupted and is budgeted at the percentile.

The planner scores every combination of thresholds on a grid (midpoints between the stages'
validation confidences at evenly spaced quantiles, plus "always answer" and "never answer") by
simulating that rule on the validation split. Each stage's latency is drawn from the
distribution its manifest entry describes: a quantile function through p50, p90 and p99,
interpolated log-linearly (latency tails are closer to exponential than to linear), with the
lowest value mirrored below p50 and the top 1% extrapolated from the p90–p99 slope. Every
validation sample is replayed ``R`` times with stratified latency draws (about 4,000 simulated
frames), so a p99 rests on about 40 tail frames.

Each combination gives an accuracy (against the labels; without labels, agreement with the last
stage, the teacher), an expected (mean) latency, the latency at the chosen percentile, the share
of frames within budget and the offload rate. Feasible points have both the mean and the
percentile within the budget. The plan is the cheapest feasible point whose accuracy is within
``tolerance`` of the best feasible accuracy: a validation split cannot tell apart policies that
differ by a sample or two, and the cheaper one sends less to the gateway. With no feasible point
the planner returns the lowest-percentile point and says it is infeasible (the gate then fails).

``weighted`` fusion averages the device's last probabilities with the gateway's,
``w · local + (1 − w) · remote``; ``w`` in [0, 0.5] is chosen first, on the whole validation
split, for the best fused accuracy of the last device stage with the last stage.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from edgec.compiler.planning.link import LinkModel
from edgec.runtime import scoring
from edgec.targets.base import LatencySource, LatencyStats, weakest_source

DEFAULT_TOLERANCE = 0.005
MIN_FRAMES = 4000
MAX_COMBINATIONS = 2048
MAX_PARETO_POINTS = 40
_FUSION_WEIGHTS = tuple(round(0.05 * i, 2) for i in range(11))
_KNOTS = np.array([0.0, 0.5, 0.9, 0.99, 1.0])
TIERS = ("device", "gateway")


@dataclass(frozen=True)
class PolicyPoint:
    """One combination of thresholds and what it achieves on the validation split.

    Attributes:
        thresholds: One per stage but the last.
        accuracy: Share of correct answers (or agreement with the teacher).
        expected_latency_ms: Mean simulated latency.
        percentile_latency_ms: Simulated latency at the planner's percentile.
        within_budget: Share of simulated frames within the budget (1.0 without a budget).
        offload_rate: Share of frames sent to the gateway.
        exit_shares: Share of frames each stage answered.
        feasible: Mean and percentile both within the budget.
    """

    thresholds: tuple[float, ...]
    accuracy: float
    expected_latency_ms: float
    percentile_latency_ms: float
    within_budget: float
    offload_rate: float
    exit_shares: tuple[float, ...]
    feasible: bool

    def to_json(self, names: Sequence[str]) -> dict:
        """The manifest form (thresholds and shares keyed by stage name)."""
        return {
            "thresholds": {n: round(t, 6) for n, t in zip(names, self.thresholds, strict=False)},
            "accuracy": round(self.accuracy, 6),
            "expected_latency_ms": round(self.expected_latency_ms, 4),
            "percentile_latency_ms": round(self.percentile_latency_ms, 4),
            "within_budget": round(self.within_budget, 6),
            "offload_rate": round(self.offload_rate, 6),
            "exit_shares": {n: round(s, 6) for n, s in zip(names, self.exit_shares, strict=True)},
            "feasible": self.feasible,
        }


@dataclass(frozen=True)
class Policy:
    """The planner's choice and the front it was chosen from.

    Attributes:
        names: Stage names in cascade order.
        tiers: Their tiers.
        chosen: The chosen point.
        pareto: Accuracy–expected-latency Pareto front, cheapest first.
        latency: The chosen point's latency distribution (the gate reads it).
        forward_cost_ms: Per stage but the last, the time needed to hand a frame on.
        confidence: Confidence measure.
        fusion: ``replace`` or ``weighted``.
        fusion_weight: ``w`` for weighted fusion, else ``None``.
        budget_ms: The latency budget (``None``: accuracy alone decides).
        percentile: Percentile the budget applies to.
        link: The link model, when a stage is on the gateway.
        payload_bytes: Bytes of one forwarded input.
        accuracy_basis: ``labels``, ``agreement-with-teacher`` or ``none``.
        tolerance: Accuracy the planner may give up for a cheaper point.
        frames: Simulated frames per point.
        combinations: Threshold combinations scored.
    """

    names: tuple[str, ...]
    tiers: tuple[str, ...]
    chosen: PolicyPoint
    pareto: tuple[PolicyPoint, ...]
    latency: LatencyStats
    forward_cost_ms: tuple[float, ...]
    confidence: str
    fusion: str
    fusion_weight: float | None
    budget_ms: float | None
    percentile: int
    link: LinkModel | None
    payload_bytes: int
    accuracy_basis: str
    tolerance: float
    frames: int = 0
    combinations: int = 1
    accuracy_known: bool = True

    @property
    def feasible(self) -> bool:
        """Whether the chosen point meets the budget."""
        return self.chosen.feasible

    @property
    def thresholds(self) -> dict[str, float]:
        """Thresholds keyed by stage name (every stage but the last)."""
        return dict(zip(self.names, self.chosen.thresholds, strict=False))

    def to_json(self) -> dict:
        """The manifest's ``policy`` section."""
        has_gateway = "gateway" in self.tiers
        chosen = self.chosen
        return {
            "budget_ms": self.budget_ms,
            "percentile": self.percentile,
            "latency_ms": self.latency.to_json(),
            "expected_latency_ms": round(chosen.expected_latency_ms, 4),
            "expected_accuracy": round(chosen.accuracy, 6) if self.accuracy_known else None,
            "accuracy_basis": self.accuracy_basis,
            "feasible": chosen.feasible,
            "within_budget": round(chosen.within_budget, 6),
            "confidence": self.confidence,
            "fusion": self.fusion,
            "fusion_weight": self.fusion_weight,
            "thresholds": {n: round(t, 6) for n, t in self.thresholds.items()},
            "forward_cost_ms": {
                n: round(c, 4) for n, c in zip(self.names, self.forward_cost_ms, strict=False)
            },
            "exit_shares": chosen.to_json(self.names)["exit_shares"],
            "offload_rate": round(chosen.offload_rate, 6),
            "bandwidth_saved": round(1 - chosen.offload_rate, 6) if has_gateway else None,
            "link": self.link.to_json(self.payload_bytes) if self.link else None,
            "payload_bytes": self.payload_bytes,
            "pareto": [p.to_json(self.names) for p in self.pareto],
            "search": {
                "frames": self.frames,
                "combinations": self.combinations,
                "tolerance": self.tolerance,
            },
        }


def latency_quantiles(stats: LatencyStats, u: np.ndarray) -> np.ndarray:
    """Latency (ms) at quantiles ``u`` of the distribution ``stats`` describes (see module doc)."""
    p50 = max(stats.p50, 1e-6)
    p90 = max(stats.p90, p50)
    p99 = max(stats.p99, p90)
    low = p50 * p50 / p90
    high = p99 * (p99 / p90) ** (0.01 / 0.09)
    knots = np.log([low, p50, p90, p99, high])
    return np.exp(np.interp(u, _KNOTS, knots))


def _check_inputs(probs, latency, tiers, names) -> int:
    count = len(latency)
    if count == 0 or len(tiers) != count or len(names) != count:
        raise ValueError("every stage needs a latency, a tier and a name")
    if probs is not None and len(probs) != count:
        raise ValueError("every stage needs validation probabilities")
    if any(t not in TIERS for t in tiers):
        raise ValueError(f"tiers must be {' or '.join(TIERS)}, got {list(tiers)}")
    # A lone gateway stage is a pipeline whose device only forwards (or runs a partition's
    # prefix); otherwise the cascade starts on the device.
    alone_on_gateway = count == 1 and tiers[0] == "gateway"
    if not alone_on_gateway and (
        tiers[0] != "device" or list(tiers) != sorted(tiers, key=TIERS.index)
    ):
        raise ValueError(f"device stages must come first, then gateway stages: {list(tiers)}")
    return count


def plan_cascade(
    stage_probs: Sequence[np.ndarray] | None,
    stage_latency: Sequence[LatencyStats],
    tiers: Sequence[str],
    link: LinkModel | None,
    payload_bytes: int,
    budget_ms: float | None,
    percentile: int = 99,
    confidence: str = "max-prob",
    fusion: str = "replace",
    labels: np.ndarray | None = None,
    *,
    names: Sequence[str] | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    min_frames: int = MIN_FRAMES,
    seed: int = 0,
) -> Policy:
    """Choose thresholds that maximise accuracy within the budget (see the module docstring).

    Args:
        stage_probs: Per stage, probabilities ``[N, C]`` on the validation split (``None``
            when there is no data: only a single stage can be planned then).
        stage_latency: Per stage, its latency distribution (with its source).
        tiers: Per stage, ``device`` or ``gateway`` (device stages first).
        link: The device–gateway link; required when a stage is on the gateway.
        payload_bytes: Bytes of one forwarded input as the runtime encodes it.
        budget_ms: Latency budget, or ``None`` to maximise accuracy alone.
        percentile: 50, 90 or 99: the percentile that must also fit the budget.
        confidence: ``max-prob``, ``margin`` or ``entropy``.
        fusion: ``replace`` or ``weighted``.
        labels: Validation labels; ``None`` scores agreement with the last stage.
        names: Stage names (default ``stage0``, ``stage1``...).
        tolerance: Accuracy the plan may give up for a cheaper point.
        min_frames: Simulated frames per point, at least.
        seed: Seed of the latency draws.

    Raises:
        ValueError: Inconsistent inputs (a bug in the caller, not bad user input).
    """
    names = tuple(names or (f"stage{i}" for i in range(len(stage_latency))))
    count = _check_inputs(stage_probs, stage_latency, tiers, names)
    if confidence not in scoring.CONFIDENCE_MEASURES:
        raise ValueError(f"unknown confidence measure {confidence!r}")
    if fusion not in scoring.FUSIONS:
        raise ValueError(f"unknown fusion {fusion!r}")
    if "gateway" in tiers and link is None:
        raise ValueError("a gateway stage needs a link model")
    device_count = list(tiers).count("device")
    forward = _forward_costs(stage_latency, tiers, link, payload_bytes, percentile)
    common = {
        "names": names,
        "tiers": tuple(tiers),
        "forward_cost_ms": forward,
        "confidence": confidence,
        "fusion": fusion,
        "budget_ms": budget_ms,
        "percentile": percentile,
        "link": link if "gateway" in tiers else None,
        "payload_bytes": payload_bytes,
        "tolerance": tolerance,
    }
    if count == 1:
        return _single_stage(stage_probs, stage_latency[0], labels, common)
    if stage_probs is None:
        raise ValueError("a cascade of several stages needs validation probabilities")
    probs = [np.asarray(p, dtype=np.float64) for p in stage_probs]
    reference = labels if labels is not None else probs[-1].argmax(axis=1)
    weight = None
    if fusion == "weighted" and device_count < count:
        weight = _fusion_weight(probs[device_count - 1], probs[-1], reference)
    sim = _Simulation(
        probs,
        stage_latency,
        tiers,
        link,
        payload_bytes,
        budget_ms,
        percentile,
        confidence,
        reference,
        weight,
        forward,
        min_frames,
        seed,
    )
    points = [sim.score(combo) for combo in _grid(sim.conf, count)]
    chosen = _choose(points, tolerance)
    return Policy(
        chosen=chosen,
        pareto=_pareto(points),
        latency=sim.latency_stats(chosen.thresholds),
        fusion_weight=weight,
        accuracy_basis="labels" if labels is not None else "agreement-with-teacher",
        frames=sim.frames,
        combinations=len(points),
        **common,
    )


def _forward_costs(latency, tiers, link, payload_bytes, percentile) -> tuple[float, ...]:
    costs = []
    for k in range(len(latency) - 1):
        if tiers[k + 1] != tiers[k]:  # a late gateway answer is cut off: budget the median
            margin = link.fallback_margin_ms
            costs.append(link.cost_ms(payload_bytes) + latency[k + 1].p50 + margin)
        else:  # a device stage cannot be interrupted: budget its tail
            costs.append(latency[k + 1].at(percentile))
    return tuple(costs)


def _single_stage(stage_probs, stats: LatencyStats, labels, common: dict) -> Policy:
    budget = common["budget_ms"]
    if common["tiers"][0] == "gateway":  # every frame crosses the link
        link_ms = common["link"].cost_ms(common["payload_bytes"])
        stats = LatencyStats.total([stats, LatencyStats.fixed(link_ms, "estimated")])
    at = stats.at(common["percentile"])
    accuracy, basis = 0.0, "none"  # without labels, the teacher agrees with itself: unknown
    if stage_probs is not None and labels is not None:
        accuracy = float((np.asarray(stage_probs[0]).argmax(axis=1) == labels).mean())
        basis = "labels"
    within = 1.0 if budget is None else _share_within(stats, budget)
    point = PolicyPoint(
        thresholds=(),
        accuracy=accuracy,
        expected_latency_ms=stats.mean,
        percentile_latency_ms=at,
        within_budget=within,
        offload_rate=1.0 if common["tiers"][0] == "gateway" else 0.0,
        exit_shares=(1.0,),
        feasible=budget is None or (stats.mean <= budget and at <= budget),
    )
    return Policy(
        chosen=point,
        pareto=(point,),
        latency=stats,
        fusion_weight=None,
        accuracy_basis=basis,
        accuracy_known=basis != "none",
        **common,
    )


def _share_within(stats: LatencyStats, budget: float) -> float:
    u = (np.arange(1000) + 0.5) / 1000
    return float((latency_quantiles(stats, u) <= budget).mean())


def _fusion_weight(local: np.ndarray, remote: np.ndarray, reference: np.ndarray) -> float:
    best, best_acc = 0.0, -1.0
    for w in _FUSION_WEIGHTS:
        fused = scoring.fuse(local, remote, "weighted", w)
        acc = float((fused.argmax(axis=1) == reference).mean())
        if acc > best_acc + 1e-12:
            best, best_acc = w, acc
    return best


def _candidates(conf: np.ndarray, size: int) -> list[float]:
    """Midpoints between distinct confidences at evenly spaced quantiles, plus the extremes."""
    distinct = np.unique(conf)
    if len(distinct) > 1:
        mids = (distinct[:-1] + distinct[1:]) / 2
        picks = np.unique(np.quantile(mids, np.linspace(0, 1, max(size - 2, 1)), method="nearest"))
    else:
        picks = np.array([])
    return [0.0, *(float(p) for p in picks), scoring.NEVER_ANSWERS]


def _grid(conf: list[np.ndarray], count: int):
    free = count - 1
    size = max(3, min(64, int(MAX_COMBINATIONS ** (1 / free))))
    per_stage = [_candidates(c, size) for c in conf[:free]]
    return itertools.product(*per_stage)


class _Simulation:
    """Replays the validation split through the runtime's rule for given thresholds."""

    def __init__(
        self,
        probs,
        latency,
        tiers,
        link,
        payload_bytes,
        budget,
        percentile,
        measure,
        reference,
        weight,
        forward,
        min_frames,
        seed,
    ):
        count = len(probs)
        samples = len(reference)
        repeats = max(1, math.ceil(min_frames / samples))
        self.frames = samples * repeats
        self.count = count
        self.budget = budget
        self.percentile = percentile
        self.forward = forward
        self.tiers = tiers
        self.device_count = list(tiers).count("device")
        self.sources = [s.source for s in latency]
        rng = np.random.default_rng(seed)
        index = np.tile(np.arange(samples), repeats)
        u = (np.arange(self.frames) + 0.5) / self.frames
        self.lat = np.stack([latency_quantiles(s, rng.permutation(u)) for s in latency])
        self.link_ms = link.cost_ms(payload_bytes) if link else 0.0
        self.margin_ms = link.fallback_margin_ms if link else 0.0
        self.conf = [scoring.confidence(p, measure)[index] for p in probs]
        correct = [(p.argmax(axis=1) == reference)[index] for p in probs]
        if weight is not None:
            local = probs[self.device_count - 1]
            for k in range(self.device_count, count):
                fused = scoring.fuse(local, probs[k], "weighted", weight)
                correct[k] = (fused.argmax(axis=1) == reference)[index]
        self.correct = np.stack(correct)

    def run(self, thresholds) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Exit stage, latency and whether it was sent to the gateway, per frame."""
        exit_at = np.zeros(self.frames, dtype=np.int64)
        elapsed = self.lat[0].copy()
        active = np.ones(self.frames, dtype=bool)
        sent = np.zeros(self.frames, dtype=bool)
        for k, theta in enumerate(thresholds):
            go = active & (self.conf[k] < theta)
            if self.budget is not None:
                go &= elapsed + self.forward[k] <= self.budget
            crossing = self.tiers[k + 1] != self.tiers[k]
            step = self.lat[k + 1] + (self.link_ms if crossing else 0.0)
            elapsed = np.where(go, elapsed + step, elapsed)
            exit_at[go] = k + 1
            sent |= go & crossing
            active = go
        if self.budget is not None and self.device_count < self.count:
            # The device stops waiting fallback_margin_ms before the budget and answers.
            late = (exit_at >= self.device_count) & (elapsed > self.budget - self.margin_ms)
            exit_at[late] = self.device_count - 1
            elapsed[late] = self.budget - self.margin_ms
        return exit_at, elapsed, sent

    def score(self, thresholds) -> PolicyPoint:
        """The point for one combination of thresholds."""
        exit_at, elapsed, sent = self.run(thresholds)
        correct = np.take_along_axis(self.correct, exit_at[None, :], axis=0)[0]
        mean = float(elapsed.mean())
        at = float(np.percentile(elapsed, self.percentile))
        budget = self.budget
        return PolicyPoint(
            thresholds=tuple(float(t) for t in thresholds),
            accuracy=float(correct.mean()),
            expected_latency_ms=mean,
            percentile_latency_ms=at,
            within_budget=1.0 if budget is None else float((elapsed <= budget).mean()),
            offload_rate=float(sent.mean()),
            exit_shares=tuple(
                float(s) for s in np.bincount(exit_at, minlength=self.count) / self.frames
            ),
            feasible=budget is None or (mean <= budget and at <= budget),
        )

    def latency_stats(self, thresholds) -> LatencyStats:
        """The latency distribution of a combination, with the weakest source it rests on."""
        exit_at, elapsed, sent = self.run(thresholds)
        reached = int(exit_at.max())
        sources: list[LatencySource] = list(self.sources[: reached + 1])
        if sent.any():
            sources.append("estimated")  # the link's RTT and bandwidth come from the descriptor
        p50, p90, p99 = np.percentile(elapsed, [50, 90, 99])
        return LatencyStats(
            float(p50), float(p90), float(p99), float(elapsed.mean()), weakest_source(sources)
        )


def _choose(points: list[PolicyPoint], tolerance: float) -> PolicyPoint:
    feasible = [p for p in points if p.feasible]
    if not feasible:
        return min(points, key=lambda p: (p.percentile_latency_ms, -p.accuracy))
    best = max(p.accuracy for p in feasible)
    close = [p for p in feasible if p.accuracy >= best - tolerance - 1e-12]
    return min(close, key=lambda p: (p.expected_latency_ms, -p.accuracy, p.offload_rate))


def _pareto(points: list[PolicyPoint]) -> tuple[PolicyPoint, ...]:
    """Points no other point beats on both accuracy and expected latency, cheapest first."""
    front: list[PolicyPoint] = []
    for point in sorted(points, key=lambda p: (p.expected_latency_ms, -p.accuracy)):
        if not front or point.accuracy > front[-1].accuracy + 1e-12:
            front.append(point)
    if len(front) > MAX_PARETO_POINTS:
        keep = np.unique(np.linspace(0, len(front) - 1, MAX_PARETO_POINTS).round().astype(int))
        front = [front[i] for i in keep]
    return tuple(front)
