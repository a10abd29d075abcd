"""From built stages to the manifest's ``policy``: the glue between the driver and the planner.

The driver hands over the manifest it built (:class:`edgec.bundle.manifest.Manifest`: each
stage's tier and latency with its source), each stage's outputs on the validation split and the
target's link; this module turns them into plain data for
:func:`edgec.compiler.planning.cascade.plan_cascade` and its result into the manifest's
``policy`` section, and returns the manifest with that policy and each stage's threshold. A
forwarded request is sized and priced by :mod:`edgec.compiler.planning.link` (the runtime's own
wire format), as the partition planner prices its requests. Beside the plan for the
descriptor's link, the policy holds ``alternatives``: the plans for a degraded or down link and
for low power (:mod:`edgec.compiler.planning.alternatives`), which the runtime switches to.

A partitioned teacher (``--partition``) is two entries: its prefix (role ``prefix``, on the
device) and the rest (role ``teacher``, on the gateway). The planner sees one stage: the
prefix's latency plus the rest's, reached by sending the intermediate tensor (the partition's
``request_bytes``) instead of the input.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from edgec.bundle.manifest import Manifest, PartitionSection, StageEntry
from edgec.compiler.planning.alternatives import plan_alternatives
from edgec.compiler.planning.cascade import Policy, plan_cascade
from edgec.compiler.planning.link import LinkModel, gateway_batch_wait_ms, request_bytes
from edgec.compiler.planning.monitoring import monitoring_section
from edgec.config import CompileConfig
from edgec.runtime import scoring
from edgec.targets.base import LatencyStats
from edgec.targets.descriptor import Link


def score_kind(outputs: np.ndarray | None) -> str:
    """``probabilities`` when a stage's validation outputs already are, ``logits`` otherwise
    (``auto`` without outputs: the runtime then decides per answer)."""
    if outputs is None:
        return "auto"
    return "probabilities" if scoring.looks_like_probabilities(outputs) else "logits"


def plan_bundle_policy(
    entries: Sequence[StageEntry],
    outputs: dict[str, np.ndarray | None],
    labels: np.ndarray | None,
    link: Link | None,
    input_spec: dict,
    budget_ms: float | None,
    percentile: int,
    confidence: str,
    fusion: str,
    tolerance: float,
    seed: int = 0,
    partition: PartitionSection | None = None,
) -> tuple[dict, Policy]:
    """Plan the cascade over built stages; return the manifest's ``policy`` and the plan.

    The policy's ``thresholds`` name every classifier stage but the last; ``partition`` is the
    manifest's partition section, if any.
    """
    prefixes = {e.name: e for e in entries if e.role == "prefix"}
    entries = [e for e in entries if e.role != "prefix"]
    names = [entry.name for entry in entries]
    latency = [entry.recorded_latency for entry in entries]
    input_payload = request_bytes(input_spec["shape"], input_spec["dtype"])
    payload = input_payload
    if partition is not None and partition.cut != "device-only":
        payload = partition.request_bytes
        if partition.split:
            k = names.index(partition.stage)
            prefix = prefixes[partition.prefix].recorded_latency
            latency[k] = LatencyStats.total([prefix, latency[k]])
    kinds = {name: score_kind(outputs.get(name)) for name in names}
    have_outputs = all(outputs.get(name) is not None for name in names)
    probs = (
        [scoring.to_probabilities(outputs[name], kinds[name]) for name in names]
        if have_outputs
        else None
    )
    tiers = [entry.tier for entry in entries]
    # The gateway batches requests when its stages take a batch: the plan budgets the wait.
    batches = [(e.details.get("batching") or {}).get("max_batch", 1) for e in entries]
    wait_ms = gateway_batch_wait_ms(
        [b for b, t in zip(batches, tiers, strict=True) if t == "gateway"]
    )
    link_model = LinkModel.from_link(link, wait_ms) if link else None
    options = {
        "budget_ms": budget_ms,
        "percentile": percentile,
        "confidence": confidence,
        "fusion": fusion,
        "tolerance": tolerance,
        "seed": seed,
    }
    plan = plan_cascade(
        probs,
        latency,
        tiers,
        link_model,
        payload,
        labels=labels if have_outputs else None,
        names=names,
        **options,
    )
    policy = {**plan.to_json(), "scores": kinds}
    # The policies the runtime switches to when the link degrades or fails, or power is low.
    alternatives = plan_alternatives(
        probs,
        latency,
        tiers,
        names,
        link_model,
        payload,
        labels if have_outputs else None,
        **options,
    )
    if alternatives:
        policy["alternatives"] = alternatives
    if policy["bandwidth_saved"] is not None and payload != input_payload:
        # Against sending every input as it is: a partition sends a different tensor.
        sent = policy["offload_rate"] * payload / input_payload
        policy["bandwidth_saved"] = round(1 - sent, 6)
    return policy, plan


def policy_for_bundle(
    manifest: Manifest,
    outputs: dict[str, np.ndarray | None],
    labels: np.ndarray | None,
    link: Link | None,
    config: CompileConfig,
) -> Manifest:
    """``manifest`` with the ``policy`` of a compile, each stage's threshold (``config``
    gives the budget and the options) and the ``monitoring`` section (drift reference,
    capture threshold)."""
    policy, _ = plan_bundle_policy(
        manifest.stages,
        outputs,
        labels,
        link,
        manifest.inputs[0],
        config.budget_ms,
        config.percentile,
        config.confidence,
        config.fusion,
        config.accuracy_tolerance / 100.0,
        config.seed,
        manifest.partition,
    )
    classifiers = [e for e in manifest.stages if e.role != "prefix"]
    monitoring = monitoring_section(
        [e.name for e in classifiers], [e.tier for e in classifiers], outputs, policy
    )
    return manifest.with_policy(policy).with_monitoring(monitoring)
