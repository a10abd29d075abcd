"""The stages of a bundle before they are built: the cascade's order and ``--partition``.

:func:`plan_stages` lays out the cascade (students on the device, smallest first, then the
teacher); :func:`partition_teacher` applies ``--partition`` to the teacher: gateway-only moves
it to the gateway, device-only to the device, and a middle cut replaces it by its prefix (a
device stage of role ``prefix``, which outputs the cut tensor) and the rest (a gateway stage
that takes it). Both parts stay FP32: the accuracy guard judges whole classifiers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import onnx

from edgec.bundle.manifest import PartitionSection
from edgec.compiler.planning.partition import PartitionChoice, choose_partition
from edgec.compiler.progress import Reporter
from edgec.compiler.students import Student
from edgec.config import CompileConfig
from edgec.errors import BadInputError
from edgec.targets import Target


@dataclass
class StagePlan:
    """A stage before it is built.

    Attributes:
        name: Directory name under ``stages/`` and the name in the manifest.
        role: ``student``, ``teacher`` or ``prefix`` (the device's part of a partitioned
            teacher; it outputs an intermediate tensor, not classes).
        tier: ``device`` or ``gateway``.
        model: The stage's final ONNX model.
        precision: ``fp32``, ``fp16`` or ``int8``.
        extra: Additional manifest fields (e.g. why students were skipped).
    """

    name: str
    role: str
    tier: str
    model: onnx.ModelProto
    precision: str = "fp32"
    extra: dict = field(default_factory=dict)


def plan_stages(
    model: onnx.ModelProto,
    precision: str,
    students: tuple[Student, ...] = (),
    has_gateway: bool = False,
) -> list[StagePlan]:
    """The cascade's stages in order: the students (smallest first, on the device), then the
    canonical teacher — on the gateway when the target has one and there are students."""
    stages = [
        StagePlan(student.name, "student", "device", student.model, precision, student.details)
        for student in students
    ]
    tier = "gateway" if students and has_gateway else "device"
    stages.append(
        StagePlan(name="teacher", role="teacher", tier=tier, model=model, precision=precision)
    )
    return stages


def partition_teacher(
    stages: list[StagePlan],
    target: Target,
    gateway: Target | None,
    config: CompileConfig,
    reporter: Reporter,
) -> tuple[list[StagePlan], PartitionSection]:
    """Apply ``--partition`` to the last stage (the teacher) for ``target`` and its ``gateway``
    target; return the stages and the manifest's ``partition`` section.

    Gateway-only moves the teacher to the gateway, device-only to the device; a middle cut
    replaces it by its prefix (device) and the rest (gateway).
    """
    teacher = stages[-1]
    with reporter.step("Choosing where to split the teacher between device and gateway"):
        choice: PartitionChoice = choose_partition(
            teacher.model, target, gateway, config.partition, config.objective
        )
    section = choice.manifest_section(teacher.name)
    estimate = section.estimate
    reporter.note(
        f"partition: {section.cut} ({section.encoding}), {estimate['source']} "
        f"{estimate['total_ms']:.3f} ms end to end, {estimate['device_energy_mj']:.3f} mJ on "
        f"the device ({config.objective} objective)"
    )
    students = [s for s in stages[:-1] if s.tier == "gateway"]
    if students and choice.split:  # never planned today; the gateway would need the input too
        raise BadInputError("--partition cannot split a teacher behind gateway students.")
    teacher.tier = choice.tier
    if not choice.split:
        return stages, section
    note = "partitioned stages stay FP32: the accuracy guard judges whole classifiers"
    if config.precision == "int8":
        reporter.note(f"--precision int8: {note}")
    prefix = StagePlan(
        name=section.prefix,
        role="prefix",
        tier="device",
        model=choice.prefix,
        precision="fp32",
        extra={"partition_of": teacher.name, "outputs_tensor": section.tensor},
    )
    teacher.model, teacher.precision = choice.suffix, "fp32"
    teacher.extra.update({"partition_input": section.tensor, "precision_note": note})
    return [*stages[:-1], prefix, teacher], section
