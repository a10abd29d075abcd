"""Accuracy and agreement of a stage on a data set, run with its real backend runner."""

from __future__ import annotations

import numpy as np

from edgec.targets.base import Runner


def predict(runner: Runner, x: np.ndarray, batch: int = 1) -> np.ndarray:
    """Run ``x`` through the runner's first input, ``batch`` samples at a time; first output."""
    name = runner.input_names[0]
    outputs = [
        runner.run({name: np.ascontiguousarray(x[i : i + batch])})[0]
        for i in range(0, len(x), batch)
    ]
    return np.concatenate(outputs, axis=0)


def top1(logits: np.ndarray) -> np.ndarray:
    """Predicted class per sample (flattening any non-batch dimensions)."""
    return logits.reshape(len(logits), -1).argmax(axis=1)


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Share of samples whose top-1 prediction equals the label."""
    return float((top1(logits) == labels).mean())


def agreement(logits: np.ndarray, reference: np.ndarray) -> float:
    """Share of samples where two models predict the same class."""
    return float((top1(logits) == top1(reference)).mean())
