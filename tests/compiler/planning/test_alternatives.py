"""The alternative policies (link degraded / down, low power) the planner stores in the manifest.

Three synthetic stages: ``tiny`` (device, right and sure on 60% of the samples), ``small``
(device, right and sure on 80%) and ``teacher`` (gateway, always right). With a 5 ms link and a
15 ms budget the trip to the gateway fits; four times the RTT (20 ms) does not, so the degraded
plan must stop offloading while the link-good plan offloads.
"""

from __future__ import annotations

import numpy as np
import pytest

from edgec.bundle.manifest import StageEntry
from edgec.compiler.planning.alternatives import (
    DEGRADED_BANDWIDTH_DIVISOR,
    DEGRADED_RTT_FACTOR,
    degraded_link,
)
from edgec.compiler.planning.link import LinkModel
from edgec.compiler.planning.policy import plan_bundle_policy
from edgec.targets.base import LatencyStats
from edgec.targets.descriptor import Link

N, C = 400, 10
BUDGET_MS = 15.0
INPUT = {"shape": [1, 1, 8, 8], "dtype": "float32"}


def _entry(name: str, tier: str, latency_ms: float) -> StageEntry:
    return StageEntry(
        name=name,
        tier=tier,
        role="teacher" if tier == "gateway" else "student",
        macs=0,
        model=f"stages/{name}/model.onnx",
        artifact=f"stages/{name}/model.onnx",
        backend="onnxruntime",
        backend_options={},
        precision="fp32",
        latency=LatencyStats.fixed(latency_ms, "measured-host"),
    )


def _onehot(labels: np.ndarray, p: float) -> np.ndarray:
    probs = np.full((len(labels), C), (1 - p) / (C - 1))
    probs[np.arange(len(labels)), labels] = p
    return probs


def _student(labels: np.ndarray, unsure: np.ndarray) -> np.ndarray:
    probs = _onehot(labels, 0.95)
    probs[unsure] = _onehot((labels[unsure] + 1) % C, 0.4)
    return probs


@pytest.fixture(scope="module")
def cascade():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, C, N)
    order = rng.permutation(N)
    tiny_unsure = np.zeros(N, dtype=bool)
    tiny_unsure[order[: 2 * N // 5]] = True
    small_unsure = np.zeros(N, dtype=bool)
    small_unsure[order[: N // 5]] = True
    outputs = {
        "tiny": _student(labels, tiny_unsure),
        "small": _student(labels, small_unsure),
        "teacher": _onehot(labels, 0.9),
    }
    entries = [_entry("tiny", "device", 0.3), _entry("small", "device", 0.8)]
    entries.append(_entry("teacher", "gateway", 2.0))
    return entries, outputs, labels


def _policy(cascade, link: Link | None, entries=None):
    all_entries, outputs, labels = cascade
    policy, plan = plan_bundle_policy(
        entries or all_entries, outputs, labels, link, INPUT, BUDGET_MS, 99, "max-prob",
        "replace", 0.0,
    )  # fmt: skip
    return policy, plan


def test_the_top_level_policy_is_the_link_good_plan_unchanged(cascade):
    """``alternatives`` is added beside the top-level fields, which stay the plan's own."""
    policy, plan = _policy(cascade, Link(rtt_ms=5, bandwidth_mbps=50))
    assert set(policy["alternatives"]) == {"link-degraded", "link-down", "low-power"}
    top = {k: v for k, v in policy.items() if k != "alternatives"}
    assert top == {**plan.to_json(), "scores": policy["scores"]}
    assert policy["offload_rate"] > 0.1  # the good link is worth the trip


def test_the_degraded_plan_is_made_for_four_times_the_rtt_and_a_quarter_of_the_bandwidth(cascade):
    """RTT 5 -> 20 ms no longer fits the 15 ms budget: the degraded plan stops offloading."""
    policy, _ = _policy(cascade, Link(rtt_ms=5, bandwidth_mbps=50))
    degraded = policy["alternatives"]["link-degraded"]
    assert degraded["link"] == {
        "rtt_ms": 20.0,
        "bandwidth_mbps": 12.5,
        "rtt_factor": DEGRADED_RTT_FACTOR,
        "bandwidth_divisor": DEGRADED_BANDWIDTH_DIVISOR,
    }
    assert degraded["stages"] == ["tiny", "small", "teacher"]
    assert degraded["offload"] is True
    assert degraded["offload_rate"] == 0.0
    assert degraded["feasible"] is True
    assert degraded["forward_cost_ms"]["small"] > policy["forward_cost_ms"]["small"] + 15.0
    assert degraded["expected_accuracy"] == pytest.approx(0.8)
    model = degraded_link(LinkModel(5.0, 50.0))
    assert (model.rtt_ms, model.bandwidth_mbps) == (20.0, 12.5)


def test_the_down_plan_answers_on_the_device_with_its_last_stage(cascade):
    """No offload: device stages only; the last device stage has no threshold (it answers)."""
    policy, _ = _policy(cascade, Link(rtt_ms=5, bandwidth_mbps=50))
    down = policy["alternatives"]["link-down"]
    assert down["stages"] == ["tiny", "small"]
    assert down["offload"] is False
    assert set(down["thresholds"]) == {"tiny"}
    assert down["offload_rate"] == 0.0
    assert down["expected_accuracy"] == pytest.approx(0.8)
    assert "link" not in down


def test_the_low_power_plan_skips_the_larger_device_student(cascade):
    """Low power: the smallest device stage, then the gateway; more frames go to the gateway."""
    policy, _ = _policy(cascade, Link(rtt_ms=5, bandwidth_mbps=50))
    low = policy["alternatives"]["low-power"]
    assert low["stages"] == ["tiny", "teacher"]
    assert set(low["thresholds"]) == {"tiny"}
    assert low["offload"] is True
    assert low["offload_rate"] == pytest.approx(0.4)
    assert low["expected_accuracy"] == pytest.approx(1.0)
    assert low["offload_rate"] > policy["offload_rate"]


def test_no_alternatives_without_a_gateway_stage(cascade):
    """A device-only cascade has nothing to switch: the policy gets no ``alternatives``."""
    entries = cascade[0][:2]
    policy, _ = _policy(cascade, None, entries)
    assert "alternatives" not in policy


def test_one_device_stage_has_link_alternatives_but_no_low_power(cascade):
    """``low-power`` needs a larger device student to skip."""
    entries = [cascade[0][0], cascade[0][2]]
    policy, _ = _policy(cascade, Link(rtt_ms=5, bandwidth_mbps=50), entries)
    assert set(policy["alternatives"]) == {"link-degraded", "link-down"}
    assert policy["alternatives"]["link-down"]["thresholds"] == {}
