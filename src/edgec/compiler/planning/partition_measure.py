"""Measure the partition planner's finalists where the device and gateway are this machine.

The cost model (:func:`edgec.compiler.planning.partition.plan_partition`) ranks every cut from
descriptor peaks; both planners cost an option with :mod:`edgec.compiler.planning.cut_cost`.
When both the device and the gateway are ``kind: host`` targets, the latencies can be measured
instead. The best :data:`FINALISTS` cuts by estimate, plus gateway-only and device-only, are
split and timed with ONNX Runtime, each part with its side's thread count and the generated
runtime's session settings. The choice is then made among these measured options only,
because estimates and measurements do not compare. The link (RTT, bandwidth) still comes from
the descriptor: it is not this machine's to measure.
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

import onnx

from edgec.compiler.planning.cut_cost import PartitionPlan, choose, cost_option, objective_key
from edgec.passes.partition import DEVICE_ONLY, GATEWAY_ONLY, Cut, split_model
from edgec.targets import Target

FINALISTS = 4
SECONDS_PER_PART = 0.3


def _time(model: onnx.ModelProto, threads: int, seconds: float, tmp: Path) -> float:
    from edgec.targets.onnxruntime.backend import OrtRunner, random_inputs
    from edgec.targets.onnxruntime.timing import interleaved_latency

    path = tmp / f"part{len(list(tmp.iterdir()))}.onnx"
    onnx.save_model(model, path)
    runner = OrtRunner(path, threads=threads)
    return interleaved_latency({"part": runner}, random_inputs(runner), seconds=seconds)["part"].p50


def _finalists(plan: PartitionPlan) -> list[Cut]:
    """The chosen cut (a forced one stays the only one), else the best few plus the extremes."""
    if plan.forced:
        return [plan.chosen.cut]
    key = objective_key(plan.objective)
    best_first = sorted((o for o in plan.options if o.feasible), key=key)
    cuts: dict[str, Cut] = {}
    for option in best_first:
        if len(cuts) < FINALISTS or option.cut.name in (GATEWAY_ONLY, DEVICE_ONLY):
            cuts.setdefault(option.cut.name, option.cut)
    return list(cuts.values())


def measure_plan(
    plan: PartitionPlan,
    model: onnx.ModelProto,
    device: Target,
    gateway: Target,
    seconds_per_part: float = SECONDS_PER_PART,
) -> PartitionPlan:
    """``plan`` with its finalists measured and the choice made among them (see the module
    docstring); unchanged unless both targets are this machine."""
    if not (device.is_host and gateway.is_host):
        return plan
    measured: dict[str, tuple[float, float]] = {}
    with tempfile.TemporaryDirectory(prefix="edgec-partition-") as tmp:
        for cut in _finalists(plan):
            if cut.name == GATEWAY_ONLY:
                parts = (None, model)
            elif cut.name == DEVICE_ONLY:
                parts = (model, None)
            else:
                parts = split_model(model, cut)
            device_ms, gateway_ms = (
                0.0 if part is None else _time(part, target.cpu.cores, seconds_per_part, Path(tmp))
                for part, target in zip(parts, (device, gateway), strict=True)
            )
            measured[cut.name] = (device_ms, gateway_ms)
    options = [
        option
        if option.cut.name not in measured
        else cost_option(
            option.cut,
            option.encoding,
            *measured[option.cut.name],
            option.device_memory_bytes,
            option.feasible,
            plan.link,
            device,
            source="measured-host",
        )
        for option in plan.options
    ]
    chosen = choose((o for o in options if o.source == "measured-host"), plan.objective)
    return dataclasses.replace(plan, options=tuple(options), chosen=chosen)
