"""Scores, confidence and result fusion: the arithmetic the cascade decides with.

This module is self-contained on purpose (it imports only NumPy, never ``edgec``): the runtime
generator copies it verbatim into a bundle's ``runtime/``, and the cascade planner imports the
same functions, so the thresholds the planner picks are compared with exactly the numbers the
generated runtime computes.

* A stage's output is turned into probabilities by :func:`to_probabilities`: a softmax when the
  stage outputs logits, nothing when it already outputs probabilities.
* :func:`confidence` maps probabilities to a score in ``[0, 1]`` (higher is more confident):
  ``max-prob`` is the top probability, ``margin`` the gap between the two highest, ``entropy``
  is ``1 - H(p) / log(C)`` (1 for a one-hot answer, 0 for a uniform one).
* A stage answers when its confidence is at least its threshold. A threshold above 1
  (:data:`NEVER_ANSWERS`) means the stage never answers and always hands on.
* :func:`fuse` combines the device's probabilities with the gateway's: ``replace`` keeps the
  gateway's, ``weighted`` takes ``w * local + (1 - w) * remote``.
"""

from __future__ import annotations

import numpy as np

CONFIDENCE_MEASURES = ("max-prob", "margin", "entropy")
FUSIONS = ("replace", "weighted")
SCORE_KINDS = ("logits", "probabilities", "auto")
NEVER_ANSWERS = 1.01
_PROB_TOLERANCE = 1e-3


def looks_like_probabilities(scores: np.ndarray) -> bool:
    """Whether every row is non-negative and sums to 1 (within a small tolerance)."""
    rows = np.asarray(scores, dtype=np.float64).reshape(len(scores), -1)
    return bool((rows >= 0).all() and np.allclose(rows.sum(axis=1), 1.0, atol=_PROB_TOLERANCE))


def to_probabilities(scores: np.ndarray, kind: str = "auto") -> np.ndarray:
    """Rows of probabilities ``[batch, classes]`` from a stage's output.

    Args:
        scores: The stage's output; every dimension after the first is flattened.
        kind: ``logits`` (softmax), ``probabilities`` (used as they are) or ``auto`` (detected).
    """
    rows = np.asarray(scores, dtype=np.float64).reshape(len(scores), -1)
    if kind == "probabilities" or (kind == "auto" and looks_like_probabilities(rows)):
        return rows
    shifted = rows - rows.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def confidence(probs: np.ndarray, measure: str = "max-prob") -> np.ndarray:
    """Confidence in ``[0, 1]`` of each row of ``probs`` under ``measure``.

    Raises:
        ValueError: ``measure`` is not one of :data:`CONFIDENCE_MEASURES`.
    """
    probs = np.asarray(probs, dtype=np.float64)
    if measure == "max-prob":
        return probs.max(axis=1)
    if measure == "margin":
        if probs.shape[1] < 2:
            return np.ones(len(probs))
        top2 = np.sort(probs, axis=1)[:, -2:]
        return top2[:, 1] - top2[:, 0]
    if measure == "entropy":
        classes = probs.shape[1]
        if classes < 2:
            return np.ones(len(probs))
        clipped = np.clip(probs, 1e-12, 1.0)
        entropy = -(clipped * np.log(clipped)).sum(axis=1)
        return np.clip(1.0 - entropy / np.log(classes), 0.0, 1.0)
    raise ValueError(
        f"unknown confidence measure {measure!r}; use one of {', '.join(CONFIDENCE_MEASURES)}"
    )


def answers(conf: np.ndarray, threshold: float) -> np.ndarray:
    """Which rows a stage answers: confidence at least the threshold."""
    return np.asarray(conf) >= threshold


def fuse(local: np.ndarray, remote: np.ndarray, fusion: str, weight: float | None) -> np.ndarray:
    """Combine the device's and the gateway's probabilities per ``fusion``.

    Raises:
        ValueError: An unknown fusion, or ``weighted`` without a weight in ``[0, 1]``.
    """
    if fusion == "replace":
        return np.asarray(remote, dtype=np.float64)
    if fusion == "weighted":
        if weight is None or not 0.0 <= weight <= 1.0:
            raise ValueError(f"weighted fusion needs a weight in [0, 1], got {weight!r}")
        local = np.asarray(local, dtype=np.float64)
        return weight * local + (1 - weight) * np.asarray(remote, dtype=np.float64)
    raise ValueError(f"unknown fusion {fusion!r}; use one of {', '.join(FUSIONS)}")
