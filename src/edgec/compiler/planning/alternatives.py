"""The policies the runtime switches between when the link or the power state changes.

The manifest's top-level ``policy`` is the plan for the descriptor's link and full power
(``link-good``). Next to it, ``policy.alternatives`` holds up to three more plans, each made by
the same planner (:func:`edgec.compiler.planning.cascade.plan_cascade`) on the same validation
outputs, for another situation:

* ``link-degraded``: the descriptor's RTT multiplied by :data:`DEGRADED_RTT_FACTOR` and its
  bandwidth divided by :data:`DEGRADED_BANDWIDTH_DIVISOR`; the thresholds are re-planned for
  that link (fewer frames are worth the trip).
* ``link-down``: no offload. Only the device stages are planned; the last device stage answers
  every frame that reaches it (the gateway's thresholds are irrelevant).
* ``low-power``: the larger device students are skipped: the smallest device stage (the first)
  and then the gateway.

Each alternative says which stages it runs (``stages``), its ``thresholds`` and
``forward_cost_ms`` (keyed by stage, as the top-level policy), whether it ``offload``\\ s, and
what it is expected to achieve (accuracy, mean and percentile latency, share within budget,
offload rate). A situation that cannot differ from ``link-good`` is left out: the link
alternatives need a device stage and a gateway stage, ``low-power`` two device stages and a
gateway stage.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from edgec.compiler.planning.cascade import Policy, plan_cascade
from edgec.compiler.planning.link import LinkModel
from edgec.targets.base import LatencyStats

DEGRADED_RTT_FACTOR = 4.0
DEGRADED_BANDWIDTH_DIVISOR = 4.0
NAMES = ("link-degraded", "link-down", "low-power")


def degraded_link(link: LinkModel) -> LinkModel:
    """The link the ``link-degraded`` policy is planned for."""
    return replace(
        link,
        rtt_ms=link.rtt_ms * DEGRADED_RTT_FACTOR,
        bandwidth_mbps=link.bandwidth_mbps / DEGRADED_BANDWIDTH_DIVISOR,
    )


def alternative_json(plan: Policy, offload: bool) -> dict:
    """The manifest form of one alternative plan."""
    chosen = plan.chosen
    entry = {
        "stages": list(plan.names),
        "offload": offload,
        "thresholds": {n: round(t, 6) for n, t in zip(plan.names, chosen.thresholds, strict=False)},
        "forward_cost_ms": {
            n: round(c, 4) for n, c in zip(plan.names, plan.forward_cost_ms, strict=False)
        },
        "fusion_weight": plan.fusion_weight,
        "expected_accuracy": round(chosen.accuracy, 6) if plan.accuracy_known else None,
        "expected_latency_ms": round(chosen.expected_latency_ms, 4),
        "percentile_latency_ms": round(chosen.percentile_latency_ms, 4),
        "within_budget": round(chosen.within_budget, 6),
        "offload_rate": round(chosen.offload_rate, 6),
        "feasible": chosen.feasible,
    }
    if plan.link is not None:
        entry["link"] = {
            "rtt_ms": round(plan.link.rtt_ms, 4),
            "bandwidth_mbps": round(plan.link.bandwidth_mbps, 4),
        }
    return entry


def plan_alternatives(
    probs: Sequence[np.ndarray] | None,
    latency: Sequence[LatencyStats],
    tiers: Sequence[str],
    names: Sequence[str],
    link: LinkModel | None,
    payload_bytes: int,
    labels: np.ndarray | None,
    **options,
) -> dict:
    """The ``policy.alternatives`` of a cascade (see the module docstring); ``{}`` when none
    applies. ``options`` are :func:`plan_cascade`'s budget, percentile, confidence, fusion,
    tolerance and seed, as for the top-level plan."""
    device = [k for k, tier in enumerate(tiers) if tier == "device"]
    remote = [k for k, tier in enumerate(tiers) if tier == "gateway"]
    if not device or not remote or link is None:
        return {}

    def plan(keep: list[int], over: LinkModel | None) -> Policy:
        return plan_cascade(
            [probs[k] for k in keep] if probs is not None else None,
            [latency[k] for k in keep],
            [tiers[k] for k in keep],
            over,
            payload_bytes,
            names=[names[k] for k in keep],
            labels=labels,
            **options,
        )

    if probs is None and len(tiers) > 1:
        return {}  # the planner needs validation outputs to place thresholds
    degraded = alternative_json(plan(list(range(len(tiers))), degraded_link(link)), True)
    degraded["link"]["rtt_factor"] = DEGRADED_RTT_FACTOR
    degraded["link"]["bandwidth_divisor"] = DEGRADED_BANDWIDTH_DIVISOR
    alternatives = {
        "link-degraded": degraded,
        "link-down": alternative_json(plan(device, None), False),
    }
    if len(device) > 1:
        alternatives["low-power"] = alternative_json(plan([device[0], *remote], link), True)
    return alternatives
