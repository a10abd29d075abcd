"""The cascade planner for detectors: a low and a high threshold per stage, chosen for mAP@0.5.

A detection stage answers a frame (:func:`edgec.runtime.detection.decide`) as *empty* when its
highest class score over every candidate is below its low threshold ``lo_k``, as *sure* when it
kept detections and every one scores above its high threshold ``hi_k``, and hands the frame on
otherwise — if the time left covers the next stage, exactly as the classifier cascade's rule
(:mod:`edgec.compiler.planning.cascade`, whose forward costs, latency draws and choice rule this
planner shares). Fusion is ``replace``: the detections of the stage that answers are the
frame's.

Candidates per stage: ``lo`` among 0 (never empty), quantiles of the stage's highest scores
on the validation split and the NMS score cut, never above the cut (a frame called empty holds
no detection); ``hi`` among the cut (sure of whatever it keeps), quantiles of its lowest kept
score and "never sure". Each
combination is replayed on the validation split (with the classifier planner's stratified
latency draws for the latency figures) and scored by COCO mAP@0.5 of the answers
(:mod:`edgec.compiler.detection.metrics`) against the split's boxes — or, without boxes, against
the last stage's detections (``accuracy_basis``). The plan is the cheapest feasible combination
whose mAP is within ``tolerance`` of the best feasible one; then each stage's low and high
threshold is tried again at every percentile of its scores between the chosen value and its
neighbours on the grid (the grid's steps of 10-25% of the frames are too coarse to put a
threshold in the gap between empty and busy frames), and the rule picks again among all the
points. The policy also records two
baselines from the same replay: *device-only* (the first stage answers every frame) and
*gateway-only* (every frame is sent to the last stage; the device runs nothing).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from edgec.compiler.detection.metrics import mean_average_precision
from edgec.compiler.planning.cascade import (
    MIN_FRAMES,
    Policy,
    PolicyPoint,
    latency_quantiles,
)
from edgec.compiler.planning.link import LinkModel
from edgec.runtime import detection
from edgec.targets.base import LatencySource, LatencyStats, weakest_source

NEVER_SURE = 2.0  # above any probability
_QUANTILES = (0.1, 0.25, 0.4, 0.5, 0.6, 0.75, 0.9)
MAX_COMBINATIONS = 400
REFINE_STEP = 0.01  # share of the frames between refined thresholds


@dataclass(frozen=True)
class DetectionPlan:
    """The chosen policy and what the detection runtime needs beyond it.

    Attributes:
        policy: The classifier planner's :class:`~edgec.compiler.planning.cascade.Policy` form
            (``accuracy`` is mAP@0.5; ``thresholds`` are the high thresholds).
        low: Per stage but the last, its low (empty) threshold.
        high: Per stage but the last, its high (sure) threshold.
        answered: Per stage but the last, the share of frames it answered as empty and sure.
        empty_on_device: Share of the frames without any object that a device stage answered.
        baselines: ``device-only`` and ``gateway-only``: mAP, mean and percentile latency,
            bytes sent per frame.
    """

    policy: Policy
    low: tuple[float, ...]
    high: tuple[float, ...]
    answered: dict
    empty_on_device: float | None
    baselines: dict

    def to_json(self) -> dict:
        """The manifest's ``policy`` section (the classifier keys, plus ``detection``)."""
        names = self.policy.names
        section = self.policy.to_json()
        section["confidence"] = "detection"
        section["task"] = "detection"
        section["scores"] = {n: "probabilities" for n in names}
        section["detection"] = {
            "metric": "mAP@0.5 (COCO, faster-coco-eval)",
            "thresholds": {
                n: {"low": round(lo, 6), "high": round(hi, 6)}
                for n, lo, hi in zip(names, self.low, self.high, strict=False)
            },
            "answered": self.answered,
            "empty_answered_on_device": self.empty_on_device,
            "baselines": self.baselines,
        }
        return section


class _Replay:
    """The validation split through the runtime's rule, for given thresholds."""

    def __init__(self, frames, latency, tiers, link, payload, budget, percentile, truth, seed):
        self.frames = frames  # per stage, per sample: (boxes, scores, classes, max_score)
        self.count = len(frames)
        self.samples = len(frames[0])
        self.repeats = max(1, math.ceil(MIN_FRAMES / self.samples))
        self.total = self.samples * self.repeats
        self.tiers = tiers
        self.budget = budget
        self.percentile = percentile
        self.truth = truth
        self.sources: list[LatencySource] = [s.source for s in latency]
        rng = np.random.default_rng(seed)
        u = (np.arange(self.total) + 0.5) / self.total
        self.lat = np.stack([latency_quantiles(s, rng.permutation(u)) for s in latency])
        self.link_ms = link.cost_ms(payload) if link else 0.0
        self.margin_ms = link.fallback_margin_ms if link else 0.0
        self.device_count = list(tiers).count("device")
        self.forward = []
        for k in range(self.count - 1):
            if tiers[k + 1] != tiers[k]:
                self.forward.append(self.link_ms + latency[k + 1].p50 + self.margin_ms)
            else:
                self.forward.append(latency[k + 1].at(percentile))
        self.max_score = [np.array([f[3] for f in stage]) for stage in frames]
        self.min_kept = [
            np.array([float(f[1].min()) if len(f[1]) else -1.0 for f in stage]) for stage in frames
        ]
        self._map_cache: dict[bytes, float] = {}

    def answers(self, k: int, low: float, high: float) -> np.ndarray:
        """Per sample: does stage ``k`` answer (empty or sure)?"""
        return (self.max_score[k] < low) | (self.min_kept[k] > high)

    def run(self, lows, highs, start: int = 0):
        """Exit stage, latency and whether it crossed the link, per simulated frame."""
        index = np.tile(np.arange(self.samples), self.repeats)
        exit_at = np.full(self.total, start, dtype=np.int64)
        elapsed = self.lat[start].copy()
        sent = np.zeros(self.total, dtype=bool)
        if start > 0 and self.tiers[start] == "gateway":
            elapsed += self.link_ms
            sent[:] = True
        active = np.ones(self.total, dtype=bool)
        for k in range(start, self.count - 1):
            go = active & ~self.answers(k, lows[k], highs[k])[index]
            if self.budget is not None:
                go &= elapsed + self.forward[k] <= self.budget
            crossing = self.tiers[k + 1] != self.tiers[k]
            elapsed = np.where(
                go, elapsed + self.lat[k + 1] + (self.link_ms if crossing else 0), elapsed
            )
            exit_at[go] = k + 1
            sent |= go & crossing
            active = go
        if self.budget is not None and 0 < self.device_count < self.count and start == 0:
            late = (exit_at >= self.device_count) & (elapsed > self.budget - self.margin_ms)
            exit_at[late] = self.device_count - 1
            elapsed[late] = self.budget - self.margin_ms
        return exit_at, elapsed, sent

    def map50(self, exit_at: np.ndarray) -> float:
        """mAP@0.5 of the answers, routed as in the first replay of each sample."""
        route = exit_at[: self.samples]
        key = route.tobytes()
        if key not in self._map_cache:
            answers = [self.frames[int(k)][i][:3] for i, k in enumerate(route)]
            self._map_cache[key] = mean_average_precision(answers, *self.truth)
        return self._map_cache[key]

    def point(self, lows, highs, start: int = 0) -> PolicyPoint:
        exit_at, elapsed, sent = self.run(lows, highs, start)
        mean = float(elapsed.mean())
        at = float(np.percentile(elapsed, self.percentile))
        budget = self.budget
        return PolicyPoint(
            thresholds=tuple(float(h) for h in highs),
            accuracy=self.map50(exit_at),
            expected_latency_ms=mean,
            percentile_latency_ms=at,
            within_budget=1.0 if budget is None else float((elapsed <= budget).mean()),
            offload_rate=float(sent.mean()),
            exit_shares=tuple(
                float(s) for s in np.bincount(exit_at, minlength=self.count) / self.total
            ),
            feasible=budget is None or (mean <= budget and at <= budget),
        )

    def latency_stats(self, lows, highs) -> LatencyStats:
        exit_at, elapsed, sent = self.run(lows, highs)
        sources = list(self.sources[: int(exit_at.max()) + 1])
        if sent.any():
            sources.append("estimated")
        p50, p90, p99 = np.percentile(elapsed, [50, 90, 99])
        return LatencyStats(
            float(p50), float(p90), float(p99), float(elapsed.mean()), weakest_source(sources)
        )


def _candidates(
    replay: _Replay, k: int, size: int, score_cut: float
) -> tuple[list[float], list[float]]:
    """Low and high thresholds worth trying for stage ``k`` (see the module docstring).

    A low threshold above ``score_cut`` would call frames *empty* that still hold detections
    (NMS keeps every candidate above the cut), so lows stop at the cut; ``score_cut`` is also
    a high threshold: sure of every detection the stage keeps.
    """
    qs = np.linspace(0.05, 0.95, size) if size != len(_QUANTILES) else np.array(_QUANTILES)
    lows = np.unique(np.quantile(replay.max_score[k], qs))
    kept = replay.min_kept[k][replay.min_kept[k] >= 0]
    highs = np.unique(np.quantile(kept, qs)) if len(kept) else np.array([])
    lows = [0.0, *(float(v) for v in lows if v < score_cut), float(score_cut)]
    return lows, [float(score_cut), *(float(v) for v in highs if v > score_cut), NEVER_SURE]


def _refined(
    replay: _Replay, k: int, options, low: float, high: float, score_cut: float
) -> list[tuple]:
    """Thresholds of stage ``k`` between the chosen ones and their neighbours on the coarse
    grid, in steps of :data:`REFINE_STEP` of the scores' distribution (each threshold moved
    alone)."""
    trials = []
    for values, chosen, scores, at in (
        (options[0], low, replay.max_score[k], 0),
        (options[1], high, replay.min_kept[k][replay.min_kept[k] >= 0], 1),
    ):
        grid = sorted(values)
        i = grid.index(chosen)
        lo_edge = grid[i - 1] if i > 0 else chosen
        hi_edge = grid[i + 1] if i + 1 < len(grid) else chosen
        if not len(scores) or lo_edge == hi_edge or chosen == NEVER_SURE:
            continue
        fine = np.quantile(scores, np.arange(REFINE_STEP, 1.0, REFINE_STEP))
        fine = fine[(fine <= score_cut) if at == 0 else (fine > score_cut)]
        for value in np.unique(fine[(fine > lo_edge) & (fine < hi_edge) & (fine != chosen)]):
            trials.append((float(value), high) if at == 0 else (low, float(value)))
    return trials


def plan_detection(
    stage_rows: Sequence[np.ndarray],
    latency: Sequence[LatencyStats],
    tiers: Sequence[str],
    names: Sequence[str],
    link: LinkModel | None,
    payload_bytes: int,
    budget_ms: float | None,
    percentile: int,
    truth: tuple[np.ndarray, np.ndarray] | None,
    tolerance: float,
    seed: int = 0,
    *,
    score_cut: float,
) -> DetectionPlan:
    """Choose both thresholds per stage but the last (see the module docstring).

    Args:
        stage_rows: Per stage, its packed outputs ``[N, 1 + 6 * max]`` on the validation split.
        latency: Per stage, its latency distribution.
        tiers: Per stage, ``device`` or ``gateway`` (device stages first).
        names: Stage names.
        link: The link model (required with a gateway stage).
        payload_bytes: Bytes of one forwarded frame.
        budget_ms: The latency budget, or ``None``.
        percentile: The percentile the budget applies to.
        truth: Padded ground-truth boxes and classes of the split; ``None``: the last stage's
            detections are the reference.
        tolerance: mAP (0..1) the plan may give up for a cheaper point.
        seed: Seed of the latency draws.
        score_cut: The NMS score cut (``--postprocess score``): no low threshold above it.
    """
    frames = [[detection.unpack(row) for row in rows] for rows in stage_rows]
    basis = "map50-labels"
    if truth is None:
        truth = _as_truth(frames[-1])
        basis = "map50-agreement-with-teacher"
    replay = _Replay(
        frames, latency, tiers, link, payload_bytes, budget_ms, percentile, truth, seed
    )
    free = replay.count - 1
    size = len(_QUANTILES) if free <= 1 else max(3, int(MAX_COMBINATIONS ** (1 / (2 * free))) - 1)
    options = [_candidates(replay, k, size, score_cut) for k in range(free)]
    points, settings = [], []
    for combo in itertools.product(*(itertools.product(lo, hi) for lo, hi in options)):
        lows = tuple(c[0] for c in combo)
        highs = tuple(c[1] for c in combo)
        points.append(replay.point(lows, highs))
        settings.append((lows, highs))
    chosen_at = _choose(points, tolerance)
    for k in range(free):  # finer steps around the chosen thresholds: the grid is coarse
        lows, highs = settings[chosen_at]
        for lo, hi in _refined(replay, k, options[k], lows[k], highs[k], score_cut):
            trial = ((*lows[:k], lo, *lows[k + 1 :]), (*highs[:k], hi, *highs[k + 1 :]))
            points.append(replay.point(*trial))
            settings.append(trial)
        chosen_at = _choose(points, tolerance)
    lows, highs = settings[chosen_at]
    chosen = points[chosen_at]
    policy = Policy(
        names=tuple(names),
        tiers=tuple(tiers),
        chosen=chosen,
        pareto=_pareto(points),
        latency=replay.latency_stats(lows, highs),
        forward_cost_ms=tuple(replay.forward),
        confidence="detection",
        fusion="replace",
        fusion_weight=None,
        budget_ms=budget_ms,
        percentile=percentile,
        link=link if "gateway" in tiers else None,
        payload_bytes=payload_bytes,
        accuracy_basis=basis,
        tolerance=tolerance,
        frames=replay.total,
        combinations=len(points),
    )
    exit_at, _, _ = replay.run(lows, highs)
    route = exit_at[: replay.samples]
    answered = {}
    for k in range(free):
        here = route == k
        empty = here & (replay.max_score[k] < lows[k])
        answered[names[k]] = {
            "empty": round(float(empty.mean()), 6),
            "sure": round(float((here & ~empty).mean()), 6),
        }
    empty_frames = (truth[1] < 0).all(axis=1)
    on_device = np.array([tiers[int(k)] == "device" for k in route])
    empty_share = (
        round(float(on_device[empty_frames].mean()), 6) if empty_frames.any() and free else None
    )
    return DetectionPlan(
        policy=policy,
        low=lows,
        high=highs,
        answered=answered,
        empty_on_device=empty_share,
        baselines=_baselines(replay, names, payload_bytes) if free else {},
    )


def _baselines(replay: _Replay, names, payload_bytes: int) -> dict:
    """Device-only (the first stage answers all) and gateway-only (the last answers all)."""
    free = replay.count - 1
    always = tuple([math.inf] * free), tuple([NEVER_SURE] * free)
    device = replay.point(*always)
    never = tuple([0.0] * free), tuple([NEVER_SURE] * free)
    last = replay.point(*never, start=replay.count - 1)
    crossing = replay.tiers[-1] == "gateway"
    return {
        "device-only": _baseline_json(device, names[0], 0),
        "gateway-only": _baseline_json(last, names[-1], payload_bytes if crossing else 0),
    }


def _baseline_json(point: PolicyPoint, stage: str, sent: int) -> dict:
    return {
        "stage": stage,
        "map50": round(point.accuracy, 6),
        "expected_latency_ms": round(point.expected_latency_ms, 4),
        "percentile_latency_ms": round(point.percentile_latency_ms, 4),
        "within_budget": round(point.within_budget, 6),
        "bytes_per_frame": sent,
    }


def _as_truth(frames) -> tuple[np.ndarray, np.ndarray]:
    """A stage's detections as padded ground truth (the reference without boxes)."""
    width = max(1, max(len(f[1]) for f in frames))
    boxes = np.zeros((len(frames), width, 4), np.float32)
    classes = np.full((len(frames), width), -1, np.int64)
    for i, (b, _s, c, _m) in enumerate(frames):
        boxes[i, : len(c)] = b
        classes[i, : len(c)] = c
    return boxes, classes


def _choose(points: list[PolicyPoint], tolerance: float) -> int:
    """Index of the cheapest feasible point within ``tolerance`` of the best feasible mAP."""
    feasible = [i for i, p in enumerate(points) if p.feasible]
    if not feasible:
        return min(
            range(len(points)), key=lambda i: (points[i].percentile_latency_ms, -points[i].accuracy)
        )
    best = max(points[i].accuracy for i in feasible)
    close = [i for i in feasible if points[i].accuracy >= best - tolerance - 1e-12]
    return min(
        close,
        key=lambda i: (points[i].offload_rate, points[i].expected_latency_ms, -points[i].accuracy),
    )


def _pareto(points: list[PolicyPoint]) -> tuple[PolicyPoint, ...]:
    """mAP-versus-expected-latency front, cheapest first (at most 40 points)."""
    front: list[PolicyPoint] = []
    for point in sorted(points, key=lambda p: (p.expected_latency_ms, -p.accuracy)):
        if not front or point.accuracy > front[-1].accuracy + 1e-12:
            front.append(point)
    if len(front) > 40:
        keep = np.unique(np.linspace(0, len(front) - 1, 40).round().astype(int))
        front = [front[i] for i in keep]
    return tuple(front)
