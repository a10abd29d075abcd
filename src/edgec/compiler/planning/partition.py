"""Choose where to split a model between the device and its gateway (Neurosurgeon-style).

For every candidate cut (:func:`edgec.passes.partition.candidate_cuts`) and every link
encoding of the crossing tensor (``raw`` float32, or per-tensor ``int8``), the end-to-end
latency is

    device prefix latency + RTT + overhead + bytes * 8 / bandwidth + gateway suffix latency

with per-layer latencies from the roofline cost model on each side's target descriptor (so the
result is ``estimated``), the RTT and bandwidth from the device's ``gateway.link``. The answer
(a few logits) is small enough that its transfer is covered by the RTT; the overhead is the
cascade planner's per-request allowance for HTTP framing and dispatch
(:data:`edgec.compiler.planning.cascade.DEFAULT_OVERHEAD_MS`), so both planners price a
request alike.
Device energy is ``(prefix latency + transmit time) * typical power``: the board is busy while
it computes and while its radio sends, and idles while it waits for the answer. A cut is
feasible only when the prefix's weights plus its largest activation fit in half the device's
RAM.

Gateway-only (send the raw input) and device-only (send nothing) are candidates too, so the
choice moves from gateway-only on a fast link to device-only on a slow one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import onnx

from edgec.compiler.planning.cascade import DEFAULT_OVERHEAD_MS
from edgec.compiler.planning.cost_model import layer_costs
from edgec.errors import BadInputError
from edgec.passes.partition import DEVICE_ONLY, GATEWAY_ONLY, Cut, candidate_cuts, split_model
from edgec.runtime import codec
from edgec.targets import Target, load_target
from edgec.targets.descriptor import Link

ENCODINGS = codec.ENCODINGS
RAM_SHARE = 0.5
MAX_NAMED_CUTS = 12
PREFIX_SUFFIX = "-prefix"


@dataclass(frozen=True)
class CutCost:
    """One (cut, encoding) option and what it costs.

    Attributes:
        cut: The cut.
        encoding: ``raw``, ``int8`` or ``none`` (device-only sends nothing).
        payload_bytes: Bytes sent over the link.
        device_ms: Estimated device prefix latency.
        transfer_ms: RTT, request overhead and transmit time (0 for device-only).
        gateway_ms: Estimated gateway suffix latency.
        total_ms: End-to-end latency.
        device_energy_mj: Device energy per inference in millijoules.
        device_memory_bytes: Prefix weights plus its largest activation.
        feasible: Whether the prefix fits the device's memory share.
        source: ``estimated`` (cost model) or ``measured-host`` (timed on this machine, see
            :mod:`edgec.compiler.planning.partition_measure`).
    """

    cut: Cut
    encoding: str
    payload_bytes: int
    device_ms: float
    transfer_ms: float
    gateway_ms: float
    total_ms: float
    device_energy_mj: float
    device_memory_bytes: int
    feasible: bool
    source: str = "estimated"

    def to_json(self) -> dict:
        """A row for ``--json`` and the manifest."""
        return {
            "cut": self.cut.name,
            "after_node": self.cut.after_node,
            "tensors": list(self.cut.tensors),
            "encoding": self.encoding,
            "payload_bytes": self.payload_bytes,
            "device_ms": round(self.device_ms, 4),
            "transfer_ms": round(self.transfer_ms, 4),
            "gateway_ms": round(self.gateway_ms, 4),
            "total_ms": round(self.total_ms, 4),
            "device_energy_mj": round(self.device_energy_mj, 4),
            "device_memory_bytes": self.device_memory_bytes,
            "feasible": self.feasible,
            "source": self.source,
        }


@dataclass(frozen=True)
class PartitionPlan:
    """Every option and the chosen one.

    Attributes:
        options: All (cut, encoding) options in cut order.
        chosen: The best feasible option for the objective.
        objective: ``latency`` or ``energy``.
        link: The link that was assumed.
        forced: Whether the user named the cut.
    """

    options: tuple[CutCost, ...]
    chosen: CutCost
    objective: str
    link: Link
    forced: bool = False

    def to_json(self) -> dict:
        """Machine-readable form for ``--json``."""
        return {
            "objective": self.objective,
            "link": self.link.model_dump(),
            "chosen": self.chosen.to_json(),
            "options": [option.to_json() for option in self.options],
        }


def objective_key(objective: str):
    """What an option is ranked by: its end-to-end latency or its device energy."""
    if objective == "latency":
        return lambda option: option.total_ms
    return lambda option: option.device_energy_mj


def cost_option(
    cut: Cut,
    encoding: str,
    device_ms: float,
    gateway_ms: float,
    memory_bytes: int,
    feasible: bool,
    link: Link,
    device: Target,
    source: str = "estimated",
) -> CutCost:
    """One option's link cost, total and device energy from its two sides' latencies."""
    payload = {"none": 0, "raw": cut.raw_bytes(), "int8": cut.int8_bytes()}[encoding]
    transmit = 0.0 if encoding == "none" else payload * 8 / (link.bandwidth_mbps * 1e3)
    fixed = 0.0 if encoding == "none" else link.rtt_ms + DEFAULT_OVERHEAD_MS
    return CutCost(
        cut=cut,
        encoding=encoding,
        payload_bytes=payload,
        device_ms=device_ms,
        transfer_ms=fixed + transmit,
        gateway_ms=gateway_ms,
        total_ms=device_ms + fixed + transmit + gateway_ms,
        device_energy_mj=(device_ms + transmit) * device.power.typical_w,
        device_memory_bytes=memory_bytes,
        feasible=feasible,
        source=source,
    )


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
        gateway: The gateway target (default: the device's).
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
    gateway = gateway or load_target(device.gateway.target)
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
    key = objective_key(objective)
    # Ties go to the lossless encoding and then to the earlier cut.
    chosen = min(candidates, key=lambda o: (key(o), o.encoding == "int8", o.cut.after_node))
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
    model = canonicalize(load_model(Path(path), input_shapes or {}).proto)
    return _measured(plan_partition(model, device, objective=objective), model, device)


def _measured(plan: PartitionPlan, model: onnx.ModelProto, device: Target) -> PartitionPlan:
    """The plan with its finalists timed when the device and its gateway are this machine."""
    # Imported here: partition_measure builds on this module's plan types.
    from edgec.compiler.planning.partition_measure import measure_plan

    return measure_plan(plan, model, device, load_target(device.gateway.target))


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

    def manifest_section(self, stage: str) -> dict:
        """The manifest's ``partition`` section for the stage named ``stage``.

        ``tensor``/``shape``/``dtype`` describe what crosses the link (``None`` for
        gateway-only: the input; device-only: nothing); ``request_bytes`` is one request
        carrying it in the runtime's wire format (0 for device-only).
        """
        chosen = self.plan.chosen
        cut = chosen.cut
        request = 0
        if cut.tensors:  # a split's tensor, or gateway-only's input
            request = codec.request_size(cut.shapes[0], cut.dtypes[0], encoding=chosen.encoding)
        return {
            "requested": self.requested,
            "objective": self.plan.objective,
            "stage": stage,
            "prefix": f"{stage}{PREFIX_SUFFIX}" if self.split else None,
            "cut": cut.name,
            "tensor": cut.tensors[0] if self.split else None,
            "shape": list(cut.shapes[0]) if self.split else None,
            "dtype": cut.dtypes[0] if self.split else None,
            "encoding": chosen.encoding,
            "request_bytes": request,
            "estimate": chosen.to_json(),
            "link": self.plan.link.model_dump(),
            "options": [option.to_json() for option in self.plan.options],
        }


def choose_partition(
    model: onnx.ModelProto,
    device: Target,
    request: str,
    objective: str = "latency",
) -> PartitionChoice:
    """Plan the split of ``model`` for ``device`` (``request``: ``auto`` or a cut) and cut it.

    Raises:
        BadInputError: The target has no gateway, or the requested cut is not valid.
    """
    if device.gateway is None:
        raise BadInputError(
            f"--partition needs a target with a gateway; '{device.name}' names none "
            "(use --partition off, or a target such as raspberry-pi-4)."
        )
    # Pre-processing fused in front, or any other rewrite, may have left tensors untyped.
    model = onnx.shape_inference.infer_shapes(model)
    forced = None if request == "auto" else request
    plan = _measured(
        plan_partition(model, device, objective=objective, forced_cut=forced), model, device
    )
    cut = plan.chosen.cut
    prefix = suffix = None
    if cut.name not in (GATEWAY_ONLY, DEVICE_ONLY):
        prefix, suffix = split_model(model, cut)
    return PartitionChoice(plan, request, prefix, suffix)
