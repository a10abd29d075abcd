"""The cascade planner on synthetic stages whose right answer is known.

Stages are plain data: probabilities on a validation split and a latency distribution. The
student below is right and sure on 80% of the samples and unsure (and wrong) on the rest; the
teacher is always right. The planner must send exactly the unsure ones on when the budget
allows it, send none when the link does not fit, and say so when nothing fits.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from edgec.bundle.manifest import PartitionSection, StageEntry
from edgec.compiler.planning.cascade import latency_quantiles, plan_cascade
from edgec.compiler.planning.link import LinkModel
from edgec.compiler.planning.policy import plan_bundle_policy, score_kind
from edgec.runtime import codec, scoring
from edgec.targets.base import LatencyStats
from edgec.targets.descriptor import Link

N, C = 400, 10
LINK = LinkModel(rtt_ms=5.0, bandwidth_mbps=50.0)
PAYLOAD = codec.request_size((1, 1, 8, 8), "float32")


def _entry(name: str, tier: str, role: str, latency_ms: float) -> StageEntry:
    return StageEntry(
        name=name,
        tier=tier,
        role=role,
        macs=0,
        model=f"stages/{name}/model.onnx",
        artifact=f"stages/{name}/model.onnx",
        backend="onnxruntime",
        backend_options={},
        precision="fp32",
        latency=LatencyStats.fixed(latency_ms),
    )


def _onehot(labels: np.ndarray, p: float) -> np.ndarray:
    probs = np.full((len(labels), C), (1 - p) / (C - 1))
    probs[np.arange(len(labels)), labels] = p
    return probs


@pytest.fixture(scope="module")
def stages():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, C, N)
    unsure = np.zeros(N, dtype=bool)
    unsure[rng.permutation(N)[: N // 5]] = True
    student = _onehot(labels, 0.95)
    student[unsure] = _onehot((labels[unsure] + 1) % C, 0.4)
    teacher = _onehot(labels, 0.9)
    latency = [LatencyStats.fixed(0.5, "measured-host"), LatencyStats.fixed(2.0, "measured-host")]
    return labels, unsure, [student, teacher], latency


def _plan(stages, budget, **kwargs):
    labels, _, probs, latency = stages
    options = {"labels": labels, "names": ["student", "teacher"], **kwargs}
    return plan_cascade(probs, latency, ["device", "gateway"], LINK, PAYLOAD, budget, 99, **options)


def test_unsure_frames_go_to_the_gateway_when_the_budget_allows(stages):
    """Budget 50 ms: exactly the unsure 20% are offloaded and every answer is right."""
    policy = _plan(stages, 50.0)
    assert policy.feasible
    assert policy.chosen.accuracy == 1.0
    assert policy.chosen.offload_rate == pytest.approx(0.2)
    assert 0.4 < policy.thresholds["student"] < 0.95
    link = LINK.cost_ms(PAYLOAD)
    assert policy.forward_cost_ms == (pytest.approx(link + 2.0 + LINK.fallback_margin_ms),)
    assert policy.chosen.expected_latency_ms == pytest.approx(0.5 + 0.2 * (2.0 + link), rel=1e-6)
    assert policy.latency.source == "estimated"  # the link comes from the descriptor


def test_no_offload_when_the_link_does_not_fit_the_budget(stages):
    """Budget 6 ms < RTT + transfer + overhead + teacher: the student answers everything."""
    policy = _plan(stages, 6.0)
    assert policy.feasible
    assert policy.chosen.offload_rate == 0.0
    assert policy.chosen.accuracy == pytest.approx(0.8)
    assert policy.latency.source == "measured-host"


def test_nothing_fits_is_reported_infeasible(stages):
    """Budget below the first stage's own latency: the cheapest point, marked infeasible."""
    policy = _plan(stages, 0.1)
    assert not policy.feasible
    assert policy.chosen.exit_shares == (1.0, 0.0)
    assert policy.to_json()["feasible"] is False


def test_without_labels_accuracy_is_agreement_with_the_teacher(stages):
    """No labels: the plan scores agreement with the last stage."""
    policy = _plan(stages, 50.0, labels=None)
    assert policy.accuracy_basis == "agreement-with-teacher"
    assert policy.chosen.accuracy == 1.0


def test_without_a_budget_accuracy_alone_decides(stages):
    """No budget: the best accuracy, at the lowest latency among equals."""
    policy = _plan(stages, None)
    assert policy.chosen.accuracy == 1.0
    assert policy.chosen.offload_rate == pytest.approx(0.2)


def test_a_late_gateway_answer_is_replaced_by_the_device_at_the_deadline(stages):
    """The gateway step is budgeted at the teacher's median; frames in its slow tail miss the
    deadline and are answered by the device just before the budget runs out."""
    labels, _, probs, latency = stages
    slow_tail = LatencyStats(p50=2.0, p90=3.0, p99=60.0, mean=3.0, source="measured-host")
    budget = 30.0
    policy = plan_cascade(
        probs,
        [latency[0], slow_tail],
        ["device", "gateway"],
        LINK,
        PAYLOAD,
        budget,
        99,
        labels=labels,
    )
    assert policy.chosen.offload_rate == pytest.approx(0.2)
    assert 0.98 < policy.chosen.accuracy < 1.0  # the late ones got the student's answer
    assert policy.latency.p99 <= budget - LINK.fallback_margin_ms + 1e-9
    assert policy.chosen.within_budget == 1.0


def test_a_slow_device_stage_tail_blocks_its_step():
    """A device stage cannot be interrupted: its p99 must fit, or frames stay at the first."""
    rng = np.random.default_rng(4)
    labels = rng.integers(0, C, N)
    probs = [_onehot(labels, 0.5), _onehot(labels, 0.9)]
    tail = LatencyStats(p50=1.0, p90=2.0, p99=80.0, mean=2.0, source="measured-host")
    latency = [LatencyStats.fixed(0.2, "measured-host"), tail]
    policy = plan_cascade(probs, latency, ["device", "device"], None, PAYLOAD, 30.0, 99)
    assert policy.forward_cost_ms == (80.0,)
    assert policy.chosen.exit_shares == (1.0, 0.0)


def test_the_runtime_rule_reproduces_the_planned_exits(stages):
    """Replaying the thresholds with the runtime's own scoring gives the planned exit shares
    (fixed latencies, so the budget check is deterministic)."""
    probs = stages[2]
    policy = _plan(stages, 50.0, confidence="margin")
    conf = scoring.confidence(probs[0], "margin")
    forwarded = ~scoring.answers(conf, policy.thresholds["student"])
    assert forwarded.mean() == pytest.approx(policy.chosen.exit_shares[1])


@pytest.mark.parametrize("measure", scoring.CONFIDENCE_MEASURES)
def test_every_confidence_measure_finds_the_unsure_frames(stages, measure):
    """max-prob, margin and entropy all separate sure from unsure answers here."""
    policy = _plan(stages, 50.0, confidence=measure)
    assert policy.chosen.accuracy == 1.0 and policy.chosen.offload_rate == pytest.approx(0.2)


def test_weighted_fusion_uses_the_device_when_it_helps():
    """Where the teacher is barely wrong and the student right, weighting the student's
    probabilities in fixes the answer; replacing cannot."""
    rng = np.random.default_rng(1)
    labels = rng.integers(0, C, N)
    order = rng.permutation(N)
    flaky, student_wrong = order[:40], order[40:120]
    student = _onehot(labels, 0.3)
    student[student_wrong] = _onehot((labels[student_wrong] + 1) % C, 0.3)
    teacher = _onehot(labels, 0.9)
    teacher[flaky] = 0.0
    teacher[flaky, labels[flaky]] = 0.45
    teacher[flaky, (labels[flaky] + 2) % C] = 0.55
    latency = [LatencyStats.fixed(0.5, "measured-host"), LatencyStats.fixed(1.0, "measured-host")]
    common = ([student, teacher], latency, ["device", "gateway"], LINK, PAYLOAD, None, 99)
    replace = plan_cascade(*common, fusion="replace", labels=labels, tolerance=0.0)
    weighted = plan_cascade(*common, fusion="weighted", labels=labels, tolerance=0.0)
    assert replace.chosen.accuracy == pytest.approx(0.9)
    assert 0.3 < weighted.fusion_weight <= 0.5
    assert weighted.chosen.accuracy == 1.0


def test_tolerance_trades_a_little_accuracy_for_fewer_offloads():
    """With a tolerance the plan is cheaper and within the tolerance of the best."""
    rng = np.random.default_rng(2)
    labels = rng.integers(0, C, N)
    conf = rng.uniform(0.2, 1.0, N)
    right = rng.uniform(0, 1, N) < conf  # calibrated: surer answers are right more often
    student = _onehot(np.where(right, labels, (labels + 1) % C), 0.5)
    student[np.arange(N), student.argmax(axis=1)] = conf
    latency = [LatencyStats.fixed(0.5, "measured-host"), LatencyStats.fixed(2.0, "measured-host")]
    args = ([student, _onehot(labels, 0.9)], latency, ["device", "gateway"], LINK, PAYLOAD, 50.0)
    strict = plan_cascade(*args, labels=labels, tolerance=0.0)
    loose = plan_cascade(*args, labels=labels, tolerance=0.02)
    assert loose.chosen.offload_rate < strict.chosen.offload_rate
    assert loose.chosen.accuracy >= strict.chosen.accuracy - 0.02


def test_pareto_front_is_cheapest_first_and_strictly_improving(stages):
    """Each front point is slower and more accurate than the one before."""
    front = _plan(stages, 50.0).pareto
    assert len(front) >= 2
    for a, b in itertools.pairwise(front):
        assert b.expected_latency_ms >= a.expected_latency_ms and b.accuracy > a.accuracy


def test_three_stages_two_on_the_device():
    """Device -> device -> gateway: the middle stage costs no link; thresholds for two."""
    rng = np.random.default_rng(3)
    labels = rng.integers(0, C, N)
    probs = [_onehot(labels, p) for p in (0.5, 0.7, 0.9)]
    latency = [LatencyStats.fixed(t, "measured-host") for t in (0.2, 0.6, 2.0)]
    policy = plan_cascade(
        probs,
        latency,
        ["device", "device", "gateway"],
        LINK,
        PAYLOAD,
        30.0,
        99,
        labels=labels,
        names=["tiny", "small", "teacher"],
    )
    assert set(policy.thresholds) == {"tiny", "small"}
    assert policy.forward_cost_ms[0] == pytest.approx(0.6)
    assert policy.forward_cost_ms[1] == pytest.approx(
        LINK.cost_ms(PAYLOAD) + 2.0 + LINK.fallback_margin_ms
    )
    assert policy.chosen.exit_shares[0] == 1.0  # all right at the first stage already


def test_a_single_stage_policy_is_trivial():
    """One stage: no thresholds, its own latency and accuracy."""
    labels = np.arange(N) % C
    stats = LatencyStats(1.0, 1.2, 1.5, 1.1, "measured-host", 100)
    policy = plan_cascade(
        [_onehot(labels, 0.9)],
        [stats],
        ["device"],
        None,
        PAYLOAD,
        2.0,
        99,
        labels=labels,
        names=["teacher"],
    )
    assert policy.thresholds == {} and policy.latency == stats
    assert policy.chosen.accuracy == 1.0 and policy.feasible
    no_data = plan_cascade(None, [stats], ["device"], None, PAYLOAD, 1.2, 99)
    assert no_data.to_json()["expected_accuracy"] is None
    assert not no_data.feasible  # p99 1.5 > 1.2


def test_latency_quantiles_pass_through_the_percentiles():
    """The reconstructed distribution hits p50, p90 and p99 and never decreases."""
    stats = LatencyStats(1.0, 2.0, 8.0, 1.5, "measured-host")
    u = np.linspace(0, 1, 1001)
    values = latency_quantiles(stats, u)
    assert np.all(np.diff(values) >= 0)
    assert latency_quantiles(stats, np.array([0.5, 0.9, 0.99])) == pytest.approx([1.0, 2.0, 8.0])


def test_inconsistent_stages_are_refused():
    """A gateway stage before a device stage, or a gateway without a link, is a caller bug."""
    stats = LatencyStats.fixed(1.0)
    probs = [np.full((4, 2), 0.5)] * 2
    with pytest.raises(ValueError, match="device stages must come first"):
        plan_cascade(probs, [stats, stats], ["gateway", "device"], LINK, 10, None)
    with pytest.raises(ValueError, match="link"):
        plan_cascade(probs, [stats, stats], ["device", "gateway"], None, 10, None)


def test_plan_bundle_policy_gives_the_policy_and_a_threshold_per_stage_but_the_last(stages):
    """The manifest glue: policy keys the gate and the runtime read, thresholds per stage."""
    labels, _, probs, _ = stages
    entries = [
        _entry("student", "device", "student", 0.5),
        _entry("teacher", "gateway", "teacher", 2.0),
    ]
    logits = {"student": np.log(probs[0]), "teacher": probs[1]}
    policy, _ = plan_bundle_policy(
        entries,
        logits,
        labels,
        Link(rtt_ms=5, bandwidth_mbps=50),
        {"shape": [1, 1, 8, 8], "dtype": "float32"},
        50.0,
        99,
        "max-prob",
        "replace",
        0.0,
    )
    assert policy["scores"] == {"student": "logits", "teacher": "probabilities"}
    assert list(policy["thresholds"]) == ["student"]
    for key in ("budget_ms", "percentile", "latency_ms", "expected_accuracy", "pareto", "link"):
        assert key in policy
    assert policy["payload_bytes"] == PAYLOAD
    assert policy["bandwidth_saved"] == pytest.approx(0.8)
    assert score_kind(None) == "auto"


def test_a_lone_gateway_stage_pays_the_link_on_every_frame():
    """Gateway-only pipelines (``--partition gateway-only``): every frame crosses the link."""
    stats = LatencyStats.fixed(2.0, "measured-host")
    policy = plan_cascade(None, [stats], ["gateway"], LINK, PAYLOAD, 20.0)
    assert policy.chosen.offload_rate == 1.0
    assert policy.latency.p50 == pytest.approx(2.0 + LINK.cost_ms(PAYLOAD))
    assert policy.latency.source == "estimated"  # the link comes from the descriptor
    tight = plan_cascade(None, [stats], ["gateway"], LINK, PAYLOAD, 5.0)
    assert not tight.feasible  # 2 ms of compute fits 5 ms; the 6 ms round trip does not


def test_a_partitioned_teacher_is_planned_as_its_prefix_plus_the_rest(stages):
    """The planner sees one teacher stage: prefix latency + rest latency, reached by sending
    the intermediate tensor (the partition's request bytes) instead of the input."""
    labels, _, probs, _ = stages
    entries = [
        _entry("student", "device", "student", 0.5),
        _entry("teacher-prefix", "device", "prefix", 1.5),
        _entry("teacher", "gateway", "teacher", 2.0),
    ]
    partition = PartitionSection(
        requested="t",
        objective="latency",
        stage="teacher",
        prefix="teacher-prefix",
        cut="t",
        tensor="t",
        shape=(1, 4),
        dtype="float32",
        encoding="raw",
        request_bytes=99,
        estimate={},
        link={},
    )
    policy, plan = plan_bundle_policy(
        entries,
        {"student": probs[0], "teacher": probs[1]},
        labels,
        Link(rtt_ms=5, bandwidth_mbps=50),
        {"shape": [1, 1, 8, 8], "dtype": "float32"},
        None,
        99,
        "max-prob",
        "replace",
        0.0,
        partition=partition,
    )
    assert plan.names == ("student", "teacher")
    assert policy["payload_bytes"] == 99
    link = LinkModel(rtt_ms=5, bandwidth_mbps=50)
    forward = policy["forward_cost_ms"]["student"]
    assert forward == pytest.approx(
        link.cost_ms(99) + 1.5 + 2.0 + link.fallback_margin_ms, abs=1e-3
    )
    assert "teacher-prefix" not in policy["thresholds"]  # the prefix is not a classifier
