"""The manifest as typed values: what the compiler builds, and a dict only when it is written.

The compiler builds a :class:`Manifest` of :class:`StageEntry` values (frozen: a step that
adds to a stage returns a new entry, e.g. :meth:`StageEntry.with_threshold`), and
:func:`edgec.bundle.io.write_manifest` turns it into the JSON every reader takes (the gate, the
installer, the generated runtime: they read ``manifest.json``, never these classes). The JSON
form is the bundle format (``edgec.bundle/1``) and does not change with this model: keys that
only some stages have (``agreement_with_teacher``, ``threshold``, ...) are left out when unset,
as they always were.

The sections other parts of edgec own are kept as the JSON they produce: the target's summary,
the input/output specs, the data and students records, and the policy
(:mod:`edgec.compiler.planning.policy`). So is a stage's :attr:`StageEntry.details`, the fields
the steps that shaped it record (the students' pruning and distillation, the precision decision
and calibration, the backend candidates, the partition's tensors).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # readers (verify, install) import this module: keep it free of numpy
    from edgec.targets.base import LatencyStats

SCHEMA = "edgec.bundle/1"


@dataclass(frozen=True)
class StageEntry:
    """One stage of the bundle, in cascade order.

    Attributes:
        name: Directory name under ``stages/`` and the stage's name everywhere.
        tier: ``device`` or ``gateway``.
        role: ``student``, ``teacher`` or ``prefix`` (a partitioned teacher's device part).
        macs: Multiply-accumulates of the stage's model.
        model: Path of the stage's ONNX model, relative to the bundle.
        artifact: Path of what its backend built, relative to the bundle.
        backend: The backend that built it.
        backend_options: The artifact's metadata (build options the runtime needs).
        precision: ``fp32`` or ``int8``.
        latency: Its latency, with its source.
        accuracy: Accuracy on the validation split (``None``: no labels, or a prefix).
        agreement_with_teacher: A student's agreement with the teacher (unset otherwise).
        accuracy_measured_with: What evaluated it when the artifact cannot run here.
        threshold: Confidence at which it answers (every classifier stage but the last).
        details: Further fields the steps that shaped the stage recorded (JSON values).
    """

    name: str
    tier: str
    role: str
    macs: int
    model: str
    artifact: str
    backend: str
    backend_options: Mapping[str, Any]
    precision: str
    latency: LatencyStats
    accuracy: float | None = None
    agreement_with_teacher: float | None = None
    accuracy_measured_with: str | None = None
    threshold: float | None = None
    details: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> StageEntry:
        """The entry a ``manifest.json`` stage describes (the inverse of :meth:`to_json`)."""
        from edgec.targets.base import LatencyStats

        fields = {f.name for f in dataclasses.fields(cls)} - {"latency", "details"}
        return cls(
            **{k: v for k, v in data.items() if k in fields},
            latency=LatencyStats.from_json(data["latency_ms"]),
            details={k: v for k, v in data.items() if k not in fields and k != "latency_ms"},
        )

    @property
    def recorded_latency(self) -> LatencyStats:
        """The latency as ``manifest.json`` records it (rounded): what the planner plans with
        is what the gate and the runtime read."""
        return type(self.latency).from_json(self.latency.to_json())

    def with_threshold(self, threshold: float | None) -> StageEntry:
        """This entry with its cascade threshold set."""
        return dataclasses.replace(self, threshold=threshold)

    def to_json(self) -> dict:
        """The stage's entry in ``manifest.json``."""
        entry = {
            "name": self.name,
            "tier": self.tier,
            "role": self.role,
            "macs": self.macs,
            "model": self.model,
            "artifact": self.artifact,
            "backend": self.backend,
            "backend_options": self.backend_options,
            "precision": self.precision,
            "latency_ms": self.latency.to_json(),
            "accuracy": self.accuracy,
        }
        optional = {
            "agreement_with_teacher": self.agreement_with_teacher,
            "accuracy_measured_with": self.accuracy_measured_with,
            "threshold": self.threshold,
        }
        entry.update({k: v for k, v in optional.items() if v is not None})
        return {**entry, **self.details}


@dataclass(frozen=True)
class Source:
    """The model a bundle was compiled from.

    Attributes:
        path: Its file name (never a path: nothing path-dependent enters a bundle).
        sha256: Its hash.
    """

    path: str
    sha256: str

    def to_json(self) -> dict:
        """The manifest's ``source``."""
        return {"path": self.path, "sha256": self.sha256}


@dataclass(frozen=True)
class PartitionSection:
    """Where ``--partition`` split a stage between the device and the gateway.

    Attributes:
        requested: ``auto`` or the cut the user named.
        objective: ``latency`` or ``energy``.
        stage: The partitioned stage (its gateway part keeps the name).
        prefix: Name of its device part (``None`` unless the model is cut in two).
        cut: The chosen cut (a tensor, ``gateway-only`` or ``device-only``).
        tensor: The tensor that crosses the link (``None`` unless cut in two).
        shape: Its shape.
        dtype: Its dtype.
        encoding: ``raw``, ``int8`` or ``none`` (device-only sends nothing).
        request_bytes: One request carrying it in the runtime's wire format (0: none).
        estimate: The chosen option's costs (JSON row).
        link: The link that was assumed.
        options: Every option that was costed (JSON rows).
    """

    requested: str
    objective: str
    stage: str
    prefix: str | None
    cut: str
    tensor: str | None
    shape: tuple[int, ...] | None
    dtype: str | None
    encoding: str
    request_bytes: int
    estimate: Mapping[str, Any]
    link: Mapping[str, Any]
    options: tuple[Mapping[str, Any], ...] = ()

    @property
    def split(self) -> bool:
        """Whether the stage is cut in two (a device prefix and the gateway's rest)."""
        return self.prefix is not None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PartitionSection:
        """The section a ``manifest.json`` holds."""
        shape = data["shape"]
        return cls(
            **{k: data[k] for k in _PARTITION_SCALARS},
            shape=None if shape is None else tuple(shape),
            estimate=data["estimate"],
            link=data["link"],
            options=tuple(data["options"]),
        )

    def to_json(self) -> dict:
        """The manifest's ``partition`` section."""
        return {
            "requested": self.requested,
            "objective": self.objective,
            "stage": self.stage,
            "prefix": self.prefix,
            "cut": self.cut,
            "tensor": self.tensor,
            "shape": None if self.shape is None else list(self.shape),
            "dtype": self.dtype,
            "encoding": self.encoding,
            "request_bytes": self.request_bytes,
            "estimate": self.estimate,
            "link": self.link,
            "options": [dict(option) for option in self.options],
        }


_PARTITION_SCALARS = (
    "requested",
    "objective",
    "stage",
    "prefix",
    "cut",
    "tensor",
    "dtype",
    "encoding",
    "request_bytes",
)


@dataclass(frozen=True)
class Manifest:
    """Everything ``manifest.json`` says but its file table (added when it is written).

    Attributes:
        edgec_version: The edgec that compiled the bundle.
        created_by: Versions of the tools that shaped it.
        source: The teacher it was compiled from.
        target: The target's summary and its link to the gateway.
        inputs: The bundle's inputs (name, shape, dtype, layout, pre-processing).
        outputs: Its outputs.
        data: The ``--data`` record, or ``None``.
        students: The students' record (derived, or why not).
        stages: The stages in cascade order.
        partition: Where ``--partition`` split the teacher, or ``None``.
        policy: The cascade's policy section (``None`` until it is planned).
        monitoring: What the runtime watches in the field: the drift reference and the
            capture threshold (:mod:`edgec.compiler.planning.monitoring`; ``None`` until
            planned).
    """

    edgec_version: str
    created_by: Mapping[str, str]
    source: Source
    target: Mapping[str, Any]
    inputs: tuple[Mapping[str, Any], ...]
    outputs: tuple[Mapping[str, Any], ...]
    data: Mapping[str, Any] | None
    students: Mapping[str, Any] | None
    stages: tuple[StageEntry, ...]
    partition: PartitionSection | None = None
    policy: Mapping[str, Any] | None = None
    monitoring: Mapping[str, Any] | None = None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Manifest:
        """The manifest a ``manifest.json`` describes (its ``files`` are left out)."""
        return cls(
            edgec_version=data["edgec_version"],
            created_by=data["created_by"],
            source=Source(**data["source"]),
            target=data["target"],
            inputs=tuple(data["inputs"]),
            outputs=tuple(data["outputs"]),
            data=data.get("data"),
            students=data.get("students"),
            stages=tuple(StageEntry.from_json(stage) for stage in data["stages"]),
            partition=(
                PartitionSection.from_json(data["partition"]) if data.get("partition") else None
            ),
            policy=data.get("policy"),
            monitoring=data.get("monitoring"),
        )

    def stage(self, name: str) -> StageEntry:
        """The stage named ``name``.

        Raises:
            KeyError: No stage has that name.
        """
        for entry in self.stages:
            if entry.name == name:
                return entry
        raise KeyError(name)

    def with_policy(self, policy: Mapping[str, Any]) -> Manifest:
        """This manifest with the cascade's ``policy`` and each stage's threshold from it."""
        thresholds = policy.get("thresholds") or {}
        stages = tuple(entry.with_threshold(thresholds.get(entry.name)) for entry in self.stages)
        return dataclasses.replace(self, stages=stages, policy=policy)

    def with_monitoring(self, monitoring: Mapping[str, Any]) -> Manifest:
        """This manifest with its ``monitoring`` section."""
        return dataclasses.replace(self, monitoring=monitoring)

    def to_json(self) -> dict:
        """The manifest as JSON values (without ``files``, which the writer adds)."""
        manifest = {
            "schema": SCHEMA,
            "edgec_version": self.edgec_version,
            "created_by": dict(self.created_by),
            "source": self.source.to_json(),
            "target": dict(self.target),
            "inputs": [dict(spec) for spec in self.inputs],
            "outputs": [dict(spec) for spec in self.outputs],
            "data": self.data,
            "students": self.students,
            "stages": [entry.to_json() for entry in self.stages],
            "partition": self.partition.to_json() if self.partition else None,
        }
        if self.policy is not None:
            manifest["policy"] = self.policy
        if self.monitoring is not None:
            manifest["monitoring"] = self.monitoring
        return manifest
