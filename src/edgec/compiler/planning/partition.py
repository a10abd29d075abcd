"""Choose where to split a model between the device and its gateway (Neurosurgeon-style).

For every candidate cut (:func:`edgec.passes.partition.candidate_cuts`) and every link
encoding of the crossing tensor (``raw`` float32, or per-tensor ``int8``), the end-to-end
latency is

    device prefix latency + RTT + overhead + bytes * 8 / bandwidth + gateway suffix latency

with per-layer latencies from the roofline cost model on each side's target descriptor (so the
result is ``estimated``), the RTT and bandwidth from the device's ``gateway.link``. The request
is priced as the cascade planner prices it (:mod:`edgec.compiler.planning.link`), and an
option's total and device energy come from :mod:`edgec.compiler.planning.cut_cost`, which the
measuring planner (:mod:`edgec.compiler.planning.partition_measure`) uses too. A cut is
feasible only when the prefix's weights plus its largest activation fit in half the device's
RAM.

Gateway-only (send the raw input) and device-only (send nothing) are candidates too, so the
choice moves from gateway-only on a fast link to device-only on a slow one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import onnx

from edgec.bundle.manifest import PartitionSection
from edgec.compiler.planning.cost_model import layer_costs
from edgec.compiler.planning.cut_cost import PartitionPlan, choose, cost_option
from edgec.compiler.planning.link import ENCODINGS, gateway_target, request_bytes
from edgec.compiler.planning.partition_measure import measure_plan
from edgec.errors import BadInputError
from edgec.passes.partition import DEVICE_ONLY, GATEWAY_ONLY, candidate_cuts, split_model
from edgec.targets import Target, load_target
from edgec.targets.descriptor import Link

RAM_SHARE = 0.5
MAX_NAMED_CUTS = 12
PREFIX_SUFFIX = "-prefix"


def plan_partition(
    model: onnx.ModelProto,
    device: Target,
    gateway: Target | None = None,
    link: Link | None = None,
    objective: str = "latency",
    encodings: tuple[str, ...] = ENCODINGS,
    max_tensors: int = 1,
    forced_cut: str | None = None,
) -> PartitionPlan:
    """Cost every cut of a shape-inferred model and choose one.

    Args:
        model: The (canonical, shape-inferred) model.
        device: The device target; its ``gateway`` gives the gateway and link by default.
        gateway: The gateway target, resolved once by the caller (default: the device's).
        link: The link (default: the device's).
        objective: ``latency`` (end to end) or ``energy`` (device energy).
        encodings: Link encodings to consider for the crossing tensor.
        max_tensors: Most tensors a cut may send.
        forced_cut: Choose this cut (a tensor name, ``gateway-only`` or ``device-only``).

    Raises:
        BadInputError: No gateway, an unknown objective, or a forced cut that is not valid.
    """
    if objective not in ("latency", "energy"):
        raise BadInputError(f"--objective must be latency or energy, got '{objective}'.")
    if device.gateway is None and (gateway is None or link is None):
        raise BadInputError(
            f"Target '{device.name}' names no gateway, so there is nothing to partition with."
        )
    gateway = gateway or gateway_target(device)
    link = link or device.gateway.link
    device_costs = layer_costs(model, device)
    gateway_costs = layer_costs(model, gateway)
    budget_bytes = device.memory.ram_gb * 1e9 * RAM_SHARE
    options = []
    for cut in candidate_cuts(model, max_tensors=max_tensors):
        prefix = device_costs[: cut.after_node + 1]
        device_ms = sum(c.latency_ms for c in prefix)
        gateway_ms = sum(c.latency_ms for c in gateway_costs[cut.after_node + 1 :])
        params = sum(c.params for c in prefix) * 4
        peak_activation = max((c.activation_bytes for c in prefix), default=0)
        memory = params + peak_activation
        # The int8 encoding quantizes floats; other tensors (e.g. uint8 frames) go as they are.
        floats = all(dtype.startswith("float") for dtype in cut.dtypes)
        choices = ("none",) if cut.name == DEVICE_ONLY else encodings if floats else ("raw",)
        feasible = memory <= budget_bytes or cut.name == GATEWAY_ONLY
        for encoding in choices:
            options.append(
                cost_option(
                    cut, encoding, device_ms, gateway_ms, int(memory), feasible, link, device
                )
            )
    candidates = [o for o in options if o.feasible]
    if forced_cut is not None:
        candidates = [o for o in options if forced_cut in (o.cut.name, *o.cut.tensors)]
        if not candidates:
            names = list(dict.fromkeys(o.cut.name for o in options))
            shown = ", ".join(names[:MAX_NAMED_CUTS])
            more = f" and {len(names) - MAX_NAMED_CUTS} more" if len(names) > MAX_NAMED_CUTS else ""
            raise BadInputError(
                f"--partition {forced_cut} is not a valid cut (a tensor that alone carries "
                f"everything the rest of the model needs); valid cuts: {shown}{more} "
                "(`edgec inspect --partition` lists them)."
            )
    chosen = choose(candidates, objective)
    return PartitionPlan(tuple(options), chosen, objective, link, forced=forced_cut is not None)


def partition_model(
    path: Path,
    target: str,
    input_shapes: dict[str, tuple[int, ...]] | None = None,
    objective: str = "latency",
) -> PartitionPlan:
    """Load, canonicalise and partition a model file for a device target (``inspect``)."""
    from edgec.compiler.canonicalize import canonicalize
    from edgec.compiler.loading import load_model

    device = load_target(target)
    if device.gateway is None:
        raise BadInputError(
            f"Target '{device.name}' names no gateway, so there is nothing to partition with."
        )
    gateway = gateway_target(device)
    model = canonicalize(load_model(Path(path), input_shapes or {}).proto)
    plan = plan_partition(model, device, gateway, objective=objective)
    return measure_plan(plan, model, device, gateway)


@dataclass(frozen=True)
class PartitionChoice:
    """Where ``edgec compile --partition`` splits a stage, and the two models.

    Attributes:
        plan: Every option and the chosen one.
        requested: ``auto`` or the cut the user named.
        prefix: The device's part (``None`` for gateway-only and device-only).
        suffix: The gateway's part (``None`` likewise).
    """

    plan: PartitionPlan
    requested: str
    prefix: onnx.ModelProto | None
    suffix: onnx.ModelProto | None

    @property
    def split(self) -> bool:
        """Whether the model is cut in two (not gateway-only or device-only)."""
        return self.prefix is not None

    @property
    def tier(self) -> str:
        """Where the (rest of the) stage runs: ``device`` only for device-only."""
        return "device" if self.plan.chosen.cut.name == DEVICE_ONLY else "gateway"

    def manifest_section(self, stage: str) -> PartitionSection:
        """The manifest's ``partition`` section for the stage named ``stage``.

        ``tensor``/``shape``/``dtype`` describe what crosses the link (``None`` for
        gateway-only: the input; device-only: nothing); ``request_bytes`` is one request
        carrying it in the runtime's wire format (0 for device-only).
        """
        chosen = self.plan.chosen
        cut = chosen.cut
        request = 0
        if cut.tensors:  # a split's tensor, or gateway-only's input
            request = request_bytes(cut.shapes[0], cut.dtypes[0], chosen.encoding)
        return PartitionSection(
            requested=self.requested,
            objective=self.plan.objective,
            stage=stage,
            prefix=f"{stage}{PREFIX_SUFFIX}" if self.split else None,
            cut=cut.name,
            tensor=cut.tensors[0] if self.split else None,
            shape=tuple(cut.shapes[0]) if self.split else None,
            dtype=cut.dtypes[0] if self.split else None,
            encoding=chosen.encoding,
            request_bytes=request,
            estimate=chosen.to_json(),
            link=self.plan.link.model_dump(),
            options=tuple(option.to_json() for option in self.plan.options),
        )


def choose_partition(
    model: onnx.ModelProto,
    device: Target,
    gateway: Target | None,
    request: str,
    objective: str = "latency",
) -> PartitionChoice:
    """Plan the split of ``model`` for ``device`` and its ``gateway`` target (``request``:
    ``auto`` or a cut) and cut it.

    Raises:
        BadInputError: The target has no gateway, or the requested cut is not valid.
    """
    if device.gateway is None or gateway is None:
        raise BadInputError(
            f"--partition needs a target with a gateway; '{device.name}' names none "
            "(use --partition off, or a target such as raspberry-pi-4)."
        )
    # Pre-processing fused in front, or any other rewrite, may have left tensors untyped.
    model = onnx.shape_inference.infer_shapes(model)
    forced = None if request == "auto" else request
    plan = plan_partition(model, device, gateway, objective=objective, forced_cut=forced)
    plan = measure_plan(plan, model, device, gateway)
    cut = plan.chosen.cut
    prefix = suffix = None
    if cut.name not in (GATEWAY_ONLY, DEVICE_ONLY):
        prefix, suffix = split_model(model, cut)
    return PartitionChoice(plan, request, prefix, suffix)
