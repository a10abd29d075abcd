"""Partitioning: every valid cut reproduces the unsplit model, and the chosen cut follows the
link — gateway-only on a fast link, device-only on a slow one, a middle cut in between.

Tolerances: raw (float32) cuts match the unsplit model within rtol 1e-5, atol 1e-6 (the same
arithmetic, split in two sessions). INT8-encoded cuts carry each element with an error of at
most scale/2 (scale = range/255); we require the outputs' SQNR >= 20 dB and the same top-1
class on these inputs.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from models import bottleneck_model, randomized_light_model

from edgec.compiler.canonicalize import canonicalize
from edgec.compiler.loading import load_model
from edgec.compiler.planning.partition import plan_partition
from edgec.errors import BadInputError
from edgec.passes.partition import DEVICE_ONLY, GATEWAY_ONLY, candidate_cuts, split_model
from edgec.runtime.codec import decode_int8, encode_int8
from edgec.targets import load_target
from edgec.targets.descriptor import Link


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options)


def _canonical(path) -> onnx.ModelProto:
    return canonicalize(load_model(path).proto)


def _check_every_cut(model: onnx.ModelProto, x: np.ndarray, max_cuts: int | None = None):
    full = _session(model)
    name = full.get_inputs()[0].name
    expected = full.run(None, {name: x})
    cuts = [c for c in candidate_cuts(model) if c.name not in (GATEWAY_ONLY, DEVICE_ONLY)]
    assert cuts, "a CNN has at least one single-tensor cut"
    if max_cuts is not None and len(cuts) > max_cuts:
        picks = np.linspace(0, len(cuts) - 1, max_cuts).round().astype(int)
        cuts = [cuts[i] for i in sorted(set(picks))]
    for cut in cuts:
        prefix, suffix = split_model(model, cut)
        middle = _session(prefix).run(None, {name: x})
        tail = _session(suffix)
        feeds = dict(zip(cut.tensors, middle, strict=True))
        got = tail.run(None, feeds)
        for a, b in zip(got, expected, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=cut.name)
        # The same cut with the tensor INT8-encoded on the link.
        lossy = {k: decode_int8(*encode_int8(v)) for k, v in feeds.items()}
        approx = tail.run(None, lossy)[0]
        noise = np.sum((approx - expected[0]) ** 2) + 1e-30
        sqnr = 10 * np.log10(np.sum(expected[0] ** 2) / noise)
        assert sqnr >= 20, (cut.name, sqnr)
        assert approx.argmax() == expected[0].argmax(), cut.name
    return len(cuts)


def test_every_cut_of_the_teacher_reproduces_it(teacher_path):
    model = _canonical(teacher_path)
    x = np.random.default_rng(0).random((1, 1, 8, 8), dtype=np.float32)
    assert _check_every_cut(model, x) >= 5


@pytest.mark.slow
@pytest.mark.parametrize("name", ["squeezenet", "inception_v1", "resnet50"])
def test_cuts_of_light_models_reproduce_them(name, tmp_path):
    path = tmp_path / f"{name}.onnx"
    onnx.save(randomized_light_model(name), path)
    model = _canonical(path)
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    assert _check_every_cut(model, x, max_cuts=4) >= 2


def test_int8_encoding_error_is_at_most_half_a_step():
    x = np.random.default_rng(0).standard_normal((1, 64, 7, 7)).astype(np.float32) * 3
    encoded, scale, zero_point = encode_int8(x)
    assert encoded.dtype == np.uint8
    assert np.abs(decode_int8(encoded, scale, zero_point) - x).max() <= scale / 2 + 1e-6


@pytest.fixture(scope="module")
def bottleneck() -> onnx.ModelProto:
    return bottleneck_model()


def _plan(model, bandwidth_mbps: float, rtt_ms: float = 2.0, objective: str = "latency"):
    device = load_target("raspberry-pi-4")
    link = Link(rtt_ms=rtt_ms, bandwidth_mbps=bandwidth_mbps)
    return plan_partition(model, device, link=link, objective=objective)


def test_bottleneck_cuts_reproduce_the_model(bottleneck):
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    assert _check_every_cut(bottleneck, x) >= 5


def test_chosen_cut_moves_with_the_link(bottleneck):
    """Gateway-only on a fast link, device-only on a slow one, the stem cut in between."""
    assert _plan(bottleneck, bandwidth_mbps=10_000, rtt_ms=0.5).chosen.cut.name == GATEWAY_ONLY
    assert _plan(bottleneck, bandwidth_mbps=0.01, rtt_ms=50).chosen.cut.name == DEVICE_ONLY
    middle = _plan(bottleneck, bandwidth_mbps=20).chosen
    assert middle.cut.name == "s"
    assert middle.payload_bytes < 3 * 224 * 224  # smaller than even the INT8 input
    gateway_only = min(
        o.total_ms for o in _plan(bottleneck, 20).options if o.cut.name == GATEWAY_ONLY
    )
    device_only = next(
        o.total_ms for o in _plan(bottleneck, 20).options if o.cut.name == DEVICE_ONLY
    )
    assert middle.total_ms < min(gateway_only, device_only)


def test_chosen_cut_is_the_minimum_over_feasible_options(bottleneck):
    plan = _plan(bottleneck, bandwidth_mbps=20)
    best = min(o.total_ms for o in plan.options if o.feasible)
    assert plan.chosen.total_ms == pytest.approx(best)


def test_energy_objective_minimises_device_energy(bottleneck):
    plan = _plan(bottleneck, bandwidth_mbps=20, objective="energy")
    assert plan.chosen.device_energy_mj == pytest.approx(
        min(o.device_energy_mj for o in plan.options if o.feasible)
    )


def test_a_prefix_that_does_not_fit_the_device_memory_is_infeasible(bottleneck):
    tiny = load_target("raspberry-pi-4").model_copy(
        update={"memory": load_target("raspberry-pi-4").memory.model_copy(update={"ram_gb": 1e-6})}
    )
    plan = plan_partition(bottleneck, tiny, link=Link(rtt_ms=1, bandwidth_mbps=1))
    assert plan.chosen.cut.name == GATEWAY_ONLY
    assert not any(o.feasible for o in plan.options if o.cut.name == DEVICE_ONLY)


def test_forced_cut_must_be_valid(teacher_path):
    model = _canonical(teacher_path)
    with pytest.raises(BadInputError, match="not a valid cut"):
        plan_partition(model, load_target("raspberry-pi-4"), forced_cut="no_such_tensor")


def test_inspect_partition_prints_every_cut_and_the_choice(teacher_path):
    import json

    from click.testing import CliRunner

    from edgec.cli import main

    result = CliRunner().invoke(
        main, ["inspect", str(teacher_path), "-t", "raspberry-pi-4", "--partition", "--json"]
    )
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)["partition"]
    names = [o["cut"] for o in plan["options"]]
    assert names[0] == GATEWAY_ONLY and names[-1] == DEVICE_ONLY and len(names) > 4
    assert plan["chosen"]["cut"] in names
    assert all(o["source"] == "estimated" for o in plan["options"])


def test_inspect_partition_on_a_target_without_gateway_is_bad_input(teacher_path):
    from click.testing import CliRunner

    from edgec.cli import main

    result = CliRunner().invoke(main, ["inspect", str(teacher_path), "-t", "host", "--partition"])
    assert result.exit_code == 2 and "names no gateway" in result.output
