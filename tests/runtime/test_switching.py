"""Policy switching: the hysteresis on synthetic RTT sequences, the power state, and the
generated device runtime following a live link (the delay proxy) and a power-state file.

The documented bounds are what these tests hold the runtime to: with ``K`` = 5 samples and a
probe every 10 frames, a link change is acted on within ``(K + 1) x 10`` = 60 frames
(:attr:`Settings.frames_to_switch`), a dead gateway within ``(3 + 1) x 10`` = 40, and a power
state written to the file at the next frame.
"""

from __future__ import annotations

import io
import json
import logging

import numpy as np
import pytest
from runtime_helpers import BUDGET_MS, RTT_MS

from edgec.bundle.io import read_manifest
from edgec.bundle.launch import import_runtime
from edgec.data import load_dataset
from edgec.runtime import switching
from edgec.runtime.switching import LinkState, PowerState, Settings, Switcher, choose

PLAN_MS = 10.0
SETTINGS = Settings()
K = SETTINGS.window


def _feed(link: LinkState, samples) -> list[str]:
    return [link.observe(s) for s in samples]


# --- Hysteresis on synthetic RTT sequences ---


def test_a_noisy_but_good_link_never_degrades():
    """Samples around the plan, with one spike in every five, keep the link good."""
    rng = np.random.default_rng(0)
    samples = PLAN_MS * rng.uniform(0.8, 1.5, 200)
    samples[::5] = PLAN_MS * 10  # a lone spike: the median ignores it
    assert set(_feed(LinkState(PLAN_MS), samples)) == {"good"}


def test_a_sustained_rise_past_twice_the_plan_degrades_within_k_samples():
    """Four times the planned RTT: degraded by the K-th high sample (the median flips at the
    third of five)."""
    link = LinkState(PLAN_MS)
    _feed(link, [PLAN_MS] * K)
    states = _feed(link, [4 * PLAN_MS] * K)
    assert states[-1] == "degraded"
    assert states.index("degraded") < K
    assert "degraded" not in _feed(LinkState(PLAN_MS), [1.9 * PLAN_MS] * 50)  # under 2x: stays


def test_recovery_needs_k_samples_degraded_and_a_median_under_1_3_times_the_plan():
    """Degraded -> good once it has been degraded for K samples and the median of the last K
    is below 1.3x; a lone slow probe does not hold it back; 1.3x-2x keeps either state."""
    link = LinkState(PLAN_MS)
    _feed(link, [4 * PLAN_MS] * K)
    assert link.state == "degraded"
    # Dwell: even fast samples right away need K samples degraded before good.
    assert _feed(link, [PLAN_MS] * (K - 1)) == ["degraded"] * (K - 1)
    assert link.observe(PLAN_MS) == "good"
    _feed(link, [4 * PLAN_MS] * (2 * K))
    assert link.state == "degraded"
    # Between the lines (1.5x): stays degraded however long.
    assert set(_feed(link, [1.5 * PLAN_MS] * 20)) == {"degraded"}
    # A lone slow probe among fast ones: the median is fast, recovery goes on.
    states = _feed(link, [PLAN_MS, 9 * PLAN_MS, PLAN_MS, PLAN_MS])
    assert states[-1] == "good"
    # Hysteresis: 1.5x keeps a good link good too.
    assert set(_feed(link, [1.5 * PLAN_MS] * 20)) == {"good"}


def test_failed_probes_in_a_row_take_the_link_down_and_k_answers_bring_it_back():
    """Three failures in a row: down; two failures then an answer: not down. Leaving down
    takes K answered probes, to good when their median is under 1.3x, else degraded."""
    link = LinkState(PLAN_MS)
    assert _feed(link, [None, None, PLAN_MS, None, None]) == ["good"] * 5
    assert link.observe(None) == "down"
    assert _feed(link, [PLAN_MS] * (K - 1)) == ["down"] * (K - 1)
    assert link.observe(PLAN_MS) == "good"
    _feed(link, [None] * SETTINGS.down_after)
    assert link.state == "down"
    assert _feed(link, [3 * PLAN_MS] * K)[-1] == "degraded"


def test_the_choice_puts_a_down_link_first_then_low_power_then_a_degraded_link():
    """Precedence, and a policy the bundle lacks is skipped down to link-good."""
    every = switching.POLICIES
    assert choose("down", "low", every) == "link-down"
    assert choose("degraded", "low", every) == "low-power"
    assert choose("degraded", "normal", every) == "link-degraded"
    assert choose("good", "normal", every) == "link-good"
    assert choose("degraded", "low", ["link-good", "link-degraded"]) == "link-degraded"
    assert choose("down", "normal", ["link-good"]) == "link-good"


class _ScriptedProbe:
    """A probe whose answers a test scripts (the Switcher's schedule is under test)."""

    def __init__(self):
        self.rtt_ms: float | None = PLAN_MS
        self.calls = 0

    def probe(self) -> float | None:
        self.calls += 1
        return self.rtt_ms

    def close(self) -> None:
        pass


def test_the_switcher_probes_every_10_frames_and_switches_within_the_stated_frames():
    """A link that turns 4x slower at frame 100 is acted on within frames_to_switch frames
    (60), and back within 60 after it recovers; the clock never triggers a probe here."""
    probe = _ScriptedProbe()
    power = PowerState(value="normal")
    switcher = Switcher(switching.POLICIES, PLAN_MS, probe, power, clock=lambda: 0.0)
    events = {}
    for frame in range(1, 301):
        if frame == 100:
            probe.rtt_ms = 4 * PLAN_MS
        if frame == 200:
            probe.rtt_ms = PLAN_MS
        event = switcher.step()
        if event:
            events[event["to"]] = frame
    assert probe.calls == 30
    assert 100 < events["link-degraded"] <= 100 + SETTINGS.frames_to_switch
    assert 200 < events["link-good"] <= 200 + SETTINGS.frames_to_switch
    assert switcher.switches == 2


def test_the_power_state_file_is_read_when_it_changes(tmp_path):
    """Missing: normal; ``low``: low; nonsense: the previous state and a problem to report."""
    path = tmp_path / "power"
    power = PowerState(path)
    assert power.read() == "normal"
    path.write_text("low\n")
    assert power.read() == "low"
    path.write_text("sleepy")
    assert power.read() == "low"
    assert "sleepy" in power.problem
    path.write_text("normal")
    assert power.read() == "normal"
    assert power.problem is None


def test_the_power_state_env_var_is_checked(monkeypatch):
    """``$EDGEC_POWER_STATE`` is used without a file; a bad value is refused up front."""
    monkeypatch.setenv(switching.POWER_STATE_ENV, "low")
    assert PowerState().read() == "low"
    monkeypatch.setenv(switching.POWER_STATE_ENV, "turbo")
    with pytest.raises(ValueError, match="turbo"):
        PowerState()


# --- The generated device runtime, live ---


def _runtime(bundle, url=None, power_state_file=None, env=None):
    device = import_runtime(bundle, "device")
    logs = io.StringIO()
    logger = device.observability.json_logger(
        f"edgec.test.switching.{id(logs)}", logging.INFO, stream=logs
    )
    runtime = device.DeviceRuntime(
        bundle,
        gateway_url=url,
        device_id="dev-sw",
        logger=logger,
        power_state_file=power_state_file,
    )
    return runtime, logs


def _events(logs: io.StringIO, name: str) -> list[dict]:
    lines = [json.loads(line) for line in logs.getvalue().splitlines()]
    return [line for line in lines if line["event"] == name]


@pytest.mark.slow
def test_a_slow_link_switches_to_degraded_and_back_and_frames_stay_within_budget(
    cascade_bundle, start_gateway, start_proxy
):
    """RTT 6 -> 30 ms (5x the plan) at frame 100: link-degraded within 60 frames; back to
    6 ms at frame 250: link-good within 60 frames; the gateway gone at frame 400: link-down
    within 40. Every switch is logged and counted; the share of frames within budget stays
    at the plan's (within the end-to-end test's slack) and no frame goes unanswered."""
    policy = read_manifest(cascade_bundle)["policy"]
    assert set(policy["alternatives"]) == {"link-degraded", "link-down", "low-power"}
    frames = [x[None] for x in load_dataset("digits").x_val]
    gateway = start_gateway(cascade_bundle)
    proxy = start_proxy(gateway.port, RTT_MS)
    warm, _ = _runtime(cascade_bundle, proxy.url)
    with warm:  # the gateway's first requests are slow (sessions warming up): not the link
        for frame in frames[:60]:
            warm.infer(frame)
    runtime, logs = _runtime(cascade_bundle, proxy.url)
    used, answers = [], []
    with runtime:
        for index in range(450):
            if index == 100:
                proxy.one_way_s = 5 * RTT_MS / 2000.0
            if index == 250:
                proxy.one_way_s = RTT_MS / 2000.0
            if index == 400:
                proxy.close()
            answers.append(runtime.infer(frames[index % len(frames)]))
            used.append(runtime.policy_name)
        _, metrics, _ = runtime.metrics.exposition()
    bound = switching.Settings().frames_to_switch
    switches = _events(logs, "policy-switch")
    story = [(e["frame"] - 1, e["to"], e["rtt_ms"], e["link"]) for e in switches]
    assert set(used[:100]) == {"link-good"}, story
    degraded_at = used.index("link-degraded")
    assert 100 <= degraded_at < 100 + bound, story
    back_at = used.index("link-good", degraded_at)
    assert 250 <= back_at < 250 + bound, story
    assert set(used[degraded_at:250]) == {"link-degraded"}, story
    down_at = used.index("link-down", back_at)
    assert 400 <= down_at < 400 + (switching.Settings().down_after + 1) * 10, story
    assert [e["to"] for e in switches] == ["link-degraded", "link-good", "link-down"]
    planned = policy["link"]["rtt_ms"] + policy["link"]["overhead_ms"]  # a probe's price
    assert switches[0]["planned_rtt_ms"] == planned
    assert switches[0]["rtt_ms"] > 2 * planned
    assert b'edgec_policy_switches_total{to="link-degraded"} 1.0' in metrics
    assert b'edgec_policy_active{policy="link-down"} 1.0' in metrics
    latency = np.array([a.latency_ms for a in answers])
    assert (latency <= BUDGET_MS).mean() >= policy["within_budget"] - 0.02
    assert all(a.prediction >= 0 for a in answers)
    # Down: no offload is tried; the last device stage answers what the first does not.
    after_down = answers[down_at:]
    assert all(a.route == "local" and a.bytes_sent == 0 for a in after_down)


@pytest.mark.slow
def test_writing_low_to_the_power_state_file_switches_to_low_power_at_the_next_frame(
    cascade_bundle, tmp_path
):
    """``low`` in the file: the next frame runs low-power (the smallest student only: the
    larger one never answers); ``normal``: back to link-good at the next frame."""
    small = read_manifest(cascade_bundle)["policy"]["alternatives"]["link-down"]["stages"][-1]
    frames = [x[None] for x in load_dataset("digits").x_val]
    power = tmp_path / "power"
    power.write_text("normal")
    runtime, logs = _runtime(cascade_bundle, power_state_file=power)
    used, stages = [], []
    with runtime:
        for index in range(120):
            if index == 40:
                power.write_text("low")
            if index == 80:
                power.write_text("normal\n")
            answer = runtime.infer(frames[index])
            used.append(runtime.policy_name)
            stages.append(answer.stage)
    assert used == ["link-good"] * 40 + ["low-power"] * 40 + ["link-good"] * 40
    assert small not in stages[40:80]
    assert small in stages[:40] + stages[80:]
    assert [e["to"] for e in _events(logs, "policy-switch")] == ["low-power", "link-good"]


@pytest.mark.slow
def test_a_bad_power_state_env_value_is_a_bundle_error(cascade_bundle, monkeypatch):
    """``EDGEC_POWER_STATE=turbo``: the runtime refuses to start, in one sentence."""
    monkeypatch.setenv(switching.POWER_STATE_ENV, "turbo")
    device = import_runtime(cascade_bundle, "device")
    with pytest.raises(device.BundleError, match="not one of normal, low"):
        device.DeviceRuntime(cascade_bundle)


@pytest.mark.slow
def test_edgec_run_takes_the_power_state_file(cascade_bundle, tmp_path):
    """``edgec run --power-state-file`` holding ``low``: low-power from the first frame, so the
    larger student answers nothing; ``normal``: it answers some frames."""
    from click.testing import CliRunner

    from edgec.cli import main

    small = read_manifest(cascade_bundle)["policy"]["alternatives"]["link-down"]["stages"][-1]
    frames = tmp_path / "frames.npy"
    np.save(frames, load_dataset("digits").x_val[:80])
    power = tmp_path / "power"
    stages = {}
    for state in ("low", "normal"):
        power.write_text(state)
        args = ["run", str(cascade_bundle), str(frames), "--power-state-file", str(power)]
        result = CliRunner().invoke(main, [*args, "--json"], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        lines = [json.loads(line) for line in result.output.splitlines() if line.startswith("{")]
        lines = [line for line in lines if "input" in line]  # answers, not log lines
        assert len(lines) == 80
        stages[state] = {line["stage"] for line in lines}
    assert small not in stages["low"]
    assert small in stages["normal"]


@pytest.mark.slow
def test_edgec_run_refuses_the_power_state_file_for_a_runtime_without_it(cascade_bundle, tmp_path):
    """A bundle generated before policy switching (its DeviceRuntime has no power_state_file)
    gets one sentence and exit 2, not a TypeError."""
    import shutil

    from click.testing import CliRunner

    from edgec.cli import main

    old = tmp_path / "old"
    shutil.copytree(cascade_bundle, old)
    device = old / "runtime" / "device.py"
    device.write_text(device.read_text().replace("power_state_file", "power_state_path"))
    frames = tmp_path / "frames.npy"
    np.save(frames, load_dataset("digits").x_val[:4])
    args = ["run", str(old), str(frames), "--power-state-file", str(tmp_path / "power")]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    assert "predates --power-state-file" in result.output
    assert "Traceback" not in result.output
