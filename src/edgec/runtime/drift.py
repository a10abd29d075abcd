"""Drift: the runtime's answers over a rolling window against the validation split's, by PSI.

Self-contained on purpose (NumPy and the standard library only): the runtime generator copies
it verbatim into a bundle's ``runtime/``, and the compiler imports the same functions to build
the reference it stores in the manifest (``monitoring.drift``), so the runtime bins its
answers exactly the way the reference was binned.

Four signals are watched, each a distribution over bins:

* ``confidence``: the answer's top-1 probability, binned at the reference's deciles (edges
  stored in the manifest; ties collapse, so a very confident model has fewer bins);
* ``class``: the predicted class;
* ``exit_stage``: the stage that answered;
* ``offload``: whether the frame was sent to the gateway.

Categorical signals get one extra bin, ``other``, for a value the reference never had (a
prediction of -1, a stage ``none``); its reference share is 0.

The population stability index of a window ``q`` against the reference ``p`` is
``sum((q_i - p_i) * ln(q_i / p_i))`` with both shares floored at :data:`FLOOR` (an empty bin
would otherwise be infinitely surprising). Common reading: below 0.1 no shift, 0.1-0.2 a
moderate one, above 0.2 (:data:`DEFAULT_THRESHOLD`) a significant one. On a window of ``n``
frames, sampling noise alone gives about ``(bins - 1) / n``: 200 frames (:data:`DEFAULT_WINDOW`)
and 10 bins give about 0.05.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence

import numpy as np

SIGNALS = ("confidence", "class", "exit_stage", "offload")
DEFAULT_WINDOW = 200
DEFAULT_THRESHOLD = 0.2
CONFIDENCE_BINS = 10
FLOOR = 1e-4
OTHER = "other"


def confidence_edges(values: Sequence[float], bins: int = CONFIDENCE_BINS) -> list[float]:
    """Inner bin edges at the quantiles of ``values`` (distinct, rounded to 6 decimals)."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return []
    inner = np.quantile(values, np.linspace(0, 1, bins + 1)[1:-1])
    return sorted({round(float(e), 6) for e in inner})


def bin_index(value: float, edges: Sequence[float]) -> int:
    """The bin of ``value`` for ``edges`` (bin ``i`` holds ``edges[i-1] <= v < edges[i]``)."""
    lo, hi = 0, len(edges)
    while lo < hi:  # bisect_right, without numpy overhead per frame
        mid = (lo + hi) // 2
        if value < edges[mid]:
            hi = mid
        else:
            lo = mid + 1
    return lo


def shares(counts: Sequence[float]) -> list[float]:
    """``counts`` as shares of their total (all zeros for no counts)."""
    total = float(sum(counts))
    return [float(c) / total if total else 0.0 for c in counts]


def psi(reference: Sequence[float], observed: Sequence[float]) -> float:
    """Population stability index of the ``observed`` shares against the ``reference``."""
    total = 0.0
    for p, q in zip(reference, observed, strict=True):
        p, q = max(p, FLOOR), max(q, FLOOR)
        total += (q - p) * math.log(q / p)
    return total


def _signal(kind: str, bins: list, counts: Sequence[float]) -> dict:
    return {
        "kind": kind,
        "bins": bins,
        "reference": [round(s, 6) for s in shares(counts)],
    }


def build_reference(
    confidence: Sequence[float],
    predictions: Sequence[int],
    classes: int,
    stages: Sequence[str],
    exit_shares: Sequence[float],
    offload_rate: float,
    window: int = DEFAULT_WINDOW,
    threshold: float = DEFAULT_THRESHOLD,
) -> dict:
    """The manifest's ``monitoring.drift`` section from the validation split's answers.

    Args:
        confidence: Top-1 probability of each validation answer.
        predictions: Predicted class of each.
        classes: Number of classes.
        stages: The classifier stages in cascade order (the ``exit_stage`` bins).
        exit_shares: The planned share of frames each stage answers.
        offload_rate: The planned share of frames sent to the gateway.
        window: Frames per rolling window.
        threshold: PSI above which a signal has drifted.
    """
    edges = confidence_edges(confidence)
    conf_counts = np.bincount(
        [bin_index(float(c), edges) for c in confidence], minlength=len(edges) + 1
    )
    class_counts = [*np.bincount(np.asarray(predictions, dtype=np.int64), minlength=classes), 0]
    return {
        "window": int(window),
        "threshold": float(threshold),
        "frames": len(confidence),
        "signals": {
            "confidence": _signal("edges", edges, conf_counts.tolist()),
            "class": _signal("categories", list(range(classes)), class_counts),
            "exit_stage": _signal("categories", list(stages), [*exit_shares, 0.0]),
            "offload": _signal("categories", [False, True], [1 - offload_rate, offload_rate, 0.0]),
        },
    }


class _Window:
    """One signal's rolling window: bin indices, their running counts and PSI terms.

    Once the window is full, a frame changes at most two bins (the one it enters, the one the
    oldest frame leaves), so only their PSI terms are recomputed.
    """

    def __init__(self, spec: dict, size: int):
        self.kind = spec["kind"]
        self.bins = spec["bins"]
        self.lookup = {value: i for i, value in enumerate(self.bins)}
        self.reference = [max(p, FLOOR) for p in spec["reference"]]
        self.items: deque[int] = deque()
        self.counts = [0] * len(self.reference)
        self.terms = [0.0] * len(self.reference)
        self.size = size

    def _term(self, index: int) -> float:
        p, q = self.reference[index], max(self.counts[index] / self.size, FLOOR)
        return (q - p) * math.log(q / p)

    def add(self, value) -> None:
        if self.kind == "edges":
            index = bin_index(float(value), self.bins)
        else:
            index = self.lookup.get(value, len(self.bins))
        self.items.append(index)
        self.counts[index] += 1
        if len(self.items) <= self.size:
            if len(self.items) == self.size:
                self.terms = [self._term(i) for i in range(len(self.counts))]
            return
        left = self.items.popleft()
        self.counts[left] -= 1
        self.terms[left] = self._term(left)
        self.terms[index] = self._term(index)

    def psi(self) -> float:
        return sum(self.terms)


class DriftMonitor:
    """Rolling windows of the four signals against a ``monitoring.drift`` reference.

    Args:
        reference: The manifest's ``monitoring.drift`` section.
        window: Frames per window (default: the reference's).
        threshold: PSI above which a signal has drifted (default: the reference's).
    """

    def __init__(self, reference: dict, window: int | None = None, threshold: float | None = None):
        self.window = int(window or reference["window"])
        self.threshold = float(threshold if threshold is not None else reference["threshold"])
        self.signals = {
            name: _Window(reference["signals"][name], self.window)
            for name in SIGNALS
            if name in reference["signals"]
        }
        self.drifted: set[str] = set()
        self.frames = 0

    def update(self, confidence: float, prediction: int, stage: str, offloaded: bool):
        """Add one answer; the PSI of every signal once a window is full, else ``None``."""
        values = {
            "confidence": confidence,
            "class": prediction,
            "exit_stage": stage,
            "offload": bool(offloaded),
        }
        for name, window in self.signals.items():
            window.add(values[name])
        self.frames += 1
        if self.frames < self.window:
            return None
        return {name: window.psi() for name, window in self.signals.items()}

    def crossings(self, values: dict[str, float]) -> tuple[list[str], list[str]]:
        """The signals that crossed the threshold upwards and back down with ``values``."""
        up = [n for n, v in values.items() if v > self.threshold and n not in self.drifted]
        down = [n for n, v in values.items() if v <= self.threshold and n in self.drifted]
        self.drifted.update(up)
        self.drifted.difference_update(down)
        return up, down
