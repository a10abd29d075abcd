"""What one partition option costs: the model both the estimating and the measuring planner use.

An option is a cut (:class:`edgec.passes.partition.Cut`) and the encoding of the tensor that
crosses the link. Given its two sides' latencies (estimated by
:mod:`~edgec.compiler.planning.partition`, or timed by
:mod:`~edgec.compiler.planning.partition_measure`), :func:`cost_option` adds the request
(:class:`~edgec.compiler.planning.link.LinkModel`) and the device's energy::

    total     = device + rtt + overhead + bytes * 8 / bandwidth + gateway
    energy    = (device + bytes * 8 / bandwidth) * typical power

(the board is busy while it computes and while its radio sends, and idles while it waits for
the answer). Device-only sends nothing and pays no request. :func:`choose` ranks options by the
objective; ties go to the lossless encoding, then to the earlier cut.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from edgec.compiler.planning.link import LinkModel, payload_bytes
from edgec.passes.partition import Cut
from edgec.targets import Target
from edgec.targets.descriptor import Link


@dataclass(frozen=True)
class CutCost:
    """One (cut, encoding) option and what it costs.

    Attributes:
        cut: The cut.
        encoding: ``raw``, ``int8`` or ``none`` (device-only sends nothing).
        payload_bytes: Bytes sent over the link.
        device_ms: Device prefix latency.
        transfer_ms: RTT, request overhead and transmit time (0 for device-only).
        gateway_ms: Gateway suffix latency.
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


def objective_key(objective: str) -> Callable[[CutCost], float]:
    """What an option is ranked by: its end-to-end latency or its device energy."""
    if objective == "latency":
        return lambda option: option.total_ms
    return lambda option: option.device_energy_mj


def choose(options: Iterable[CutCost], objective: str) -> CutCost:
    """The best option for ``objective``; ties go to the lossless encoding, then the earlier
    cut."""
    key = objective_key(objective)
    return min(options, key=lambda o: (key(o), o.encoding == "int8", o.cut.after_node))


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
    """One option's request cost, total and device energy from its two sides' latencies."""
    payload = payload_bytes(cut.shapes, cut.dtypes, encoding)
    model = LinkModel.from_link(link)
    transmit = 0.0 if encoding == "none" else model.transfer_ms(payload)
    fixed = 0.0 if encoding == "none" else model.fixed_ms
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
