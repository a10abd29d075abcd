"""The one price of a request: both planners charge the same for the same bytes on the same link,
and a tensor's wire size is the runtime's own wire format."""

from __future__ import annotations

import numpy as np
import pytest

from edgec.compiler.planning.cut_cost import cost_option
from edgec.compiler.planning.link import (
    INT8_PARAMS_BYTES,
    LinkModel,
    gateway_target,
    link_view,
    payload_bytes,
    request_bytes,
)
from edgec.passes.partition import DEVICE_ONLY, Cut
from edgec.runtime import codec
from edgec.targets import load_target
from edgec.targets.descriptor import Link

CUT = Cut("t", 3, ("t",), ((1, 16, 4, 4),), ("float32",))


def test_the_cascade_and_the_partition_planner_price_a_request_alike():
    """A partition option's link time is the cascade's forward cost of the same payload."""
    link = Link(rtt_ms=7.0, bandwidth_mbps=20.0)
    device = load_target("raspberry-pi-4")
    for encoding in ("raw", "int8"):
        option = cost_option(CUT, encoding, 1.0, 2.0, 0, True, link, device)
        cascade = LinkModel.from_link(link).cost_ms(option.payload_bytes)
        assert option.transfer_ms == pytest.approx(cascade, rel=1e-12)
        assert option.total_ms == pytest.approx(1.0 + cascade + 2.0, rel=1e-12)
    nothing = Cut(DEVICE_ONLY, 3, (), (), ())
    option = cost_option(nothing, "none", 1.0, 0.0, 0, True, link, device)
    assert (option.payload_bytes, option.transfer_ms, option.total_ms) == (0, 0.0, 1.0)


def test_wire_sizes_follow_the_runtimes_wire_format():
    """raw: the tensor's bytes; int8: one byte per element plus its scale and zero point;
    a request: exactly what the runtime's encoder sends."""
    elements = 16 * 4 * 4
    assert payload_bytes(CUT.shapes, CUT.dtypes, "raw") == elements * 4
    assert payload_bytes(CUT.shapes, CUT.dtypes, "int8") == elements + INT8_PARAMS_BYTES
    assert payload_bytes(CUT.shapes, CUT.dtypes, "none") == 0
    for encoding in ("raw", "int8"):
        body, headers = codec.encode_tensor(
            np.full((1, 16, 4, 4), 0.1234567891234567, dtype=np.float32),
            codec.NOMINAL_DEADLINE_MS,
            encoding=encoding,
        )
        sent = codec.request_bytes(codec.NOMINAL_HOST, headers, body)
        assert request_bytes((1, 16, 4, 4), "float32", encoding) == sent


def test_link_view_is_what_the_gateway_decodes():
    """raw arrives as sent; int8 arrives within half a step per sample."""
    x = np.random.default_rng(0).normal(size=(3, 1, 8, 8)).astype(np.float32)
    assert link_view(x, "raw") is x
    seen = link_view(x, "int8")
    for sample, got in zip(x, seen, strict=True):
        scale = (max(sample.max(), 0) - min(sample.min(), 0)) / 255
        assert np.abs(got - sample).max() <= scale / 2 + 1e-6


def test_the_gateway_target_is_the_descriptors():
    """A target with a gateway resolves to its gateway's descriptor; one without, to None."""
    device = load_target("raspberry-pi-4")
    assert gateway_target(device).name == device.gateway.target
    assert gateway_target(load_target(device.gateway.target)) is None


def test_the_plan_budgets_the_gateways_batch_wait_when_its_stages_batch():
    """Gateway stages that take a batch: every request is priced with the gateway's default
    batch wait on top (a device hands a frame on only when the wait fits too); a gateway stage
    at batch 1 (so no batching) adds nothing."""
    from edgec.compiler.planning.cascade import plan_cascade
    from edgec.compiler.planning.link import gateway_batch_wait_ms
    from edgec.runtime import batcher
    from edgec.targets import LatencyStats

    assert gateway_batch_wait_ms([16]) == batcher.DEFAULT_WAIT_MS > 0
    assert gateway_batch_wait_ms([16, 1]) == gateway_batch_wait_ms([]) == 0.0
    link = Link(rtt_ms=5.0, bandwidth_mbps=50.0)
    plain, waiting = LinkModel.from_link(link), LinkModel.from_link(link, 2.0)
    assert waiting.cost_ms(1000) == pytest.approx(plain.cost_ms(1000) + 2.0)
    assert waiting.fixed_ms == pytest.approx(plain.fixed_ms + 2.0)
    assert waiting.to_json(1000)["batch_wait_ms"] == 2.0
    rng = np.random.default_rng(0)
    probs = [rng.dirichlet(np.ones(4), 200) for _ in range(2)]
    latency = [LatencyStats(1.0, 1.1, 1.2, 1.0, "measured-host", 10)] * 2
    costs = [
        plan_cascade(
            probs, latency, ["device", "gateway"], model, 1000, budget_ms=50.0
        ).forward_cost_ms[0]
        for model in (plain, waiting)
    ]
    assert costs[1] == pytest.approx(costs[0] + 2.0)
