"""The manifest's ``monitoring`` section: the drift reference and the capture threshold.

The planner's validation outputs are replayed through the chosen thresholds (the runtime's
rule, without the budget's cut-offs) to get the answer the cascade gives each validation
sample; :func:`edgec.runtime.drift.build_reference` bins their top-1 confidence and predicted
class, and takes the exit-stage and offload distributions from the plan itself (which does
include the budget). The generated runtime bins its own answers with the same module.

The capture threshold is the first stage's threshold when the cascade has one (a frame the
first student would not answer alone); otherwise the 10th percentile of the validation
answers' confidence, so about one in ten in-distribution frames is kept.
"""

from __future__ import annotations

import numpy as np

from edgec.runtime import drift, scoring

CAPTURE_QUANTILE = 0.10


def validation_answers(
    probs: list[np.ndarray], tiers: list[str], policy: dict, names: list[str]
) -> np.ndarray:
    """The cascade's answer probabilities ``[N, C]`` for each validation sample."""
    measure = policy.get("confidence", "max-prob")
    thresholds = policy.get("thresholds") or {}
    count = len(probs[0])
    exit_at = np.full(count, len(probs) - 1)
    open_ = np.ones(count, dtype=bool)
    for k, name in enumerate(names[:-1]):
        answers = open_ & scoring.answers(scoring.confidence(probs[k], measure), thresholds[name])
        exit_at[answers] = k
        open_ &= ~answers
    chosen = np.stack(probs)[exit_at, np.arange(count)]
    weight = policy.get("fusion_weight")
    device_last = max((k for k, t in enumerate(tiers) if t == "device"), default=None)
    if policy.get("fusion") == "weighted" and weight is not None and device_last is not None:
        remote = np.array([tiers[k] == "gateway" for k in exit_at])
        fused = scoring.fuse(probs[device_last], chosen, "weighted", weight)
        chosen = np.where(remote[:, None], fused, chosen)
    return chosen


def monitoring_section(
    names: list[str],
    tiers: list[str],
    outputs: dict[str, np.ndarray | None],
    policy: dict,
) -> dict:
    """The ``monitoring`` section (``drift`` is ``None`` without validation outputs)."""
    first = (policy.get("thresholds") or {}).get(names[0]) if names else None
    capture = first if first is not None and 0.0 < first <= 1.0 else None
    if not names or any(outputs.get(n) is None for n in names):
        return {"drift": None, "capture": {"threshold": capture}}
    kinds = policy.get("scores") or {}
    probs = [scoring.to_probabilities(outputs[n], kinds.get(n, "auto")) for n in names]
    answers = validation_answers(probs, tiers, policy, names)
    if capture is None:
        conf = scoring.confidence(answers, policy.get("confidence", "max-prob"))
        capture = round(float(np.quantile(conf, CAPTURE_QUANTILE)), 6)
    exits = policy.get("exit_shares") or {}
    reference = drift.build_reference(
        answers.max(axis=1),
        answers.argmax(axis=1),
        answers.shape[1],
        names,
        [float(exits.get(n, 0.0)) for n in names],
        float(policy.get("offload_rate") or 0.0),
    )
    return {"drift": reference, "capture": {"threshold": capture}}
