"""Validated, frozen configuration: CLI flags (or API arguments) become one ``CompileConfig``.

Validation happens once, here, at the edge; past it code receives typed values. Cross-field
errors explain the fix.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from edgec.errors import BadInputError

Percentile = Literal[50, 90, 99]
PERCENTILES: tuple[int, ...] = (50, 90, 99)
PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "int8", "auto")

_SHAPE_RE = re.compile(r"^\s*([^=]+?)\s*=\s*(\d+(?:\s*[x,]\s*\d+)*)\s*$")


def parse_input_shape(spec: str) -> tuple[str, tuple[int, ...]]:
    """Parse ``name=1x3x224x224`` (``,`` also separates dims) into a name and a shape.

    Raises:
        BadInputError: The text is not of that form or a dimension is zero.
    """
    match = _SHAPE_RE.match(spec)
    if not match:
        raise BadInputError(
            f"--input-shape '{spec}' is not of the form NAME=DIMS, e.g. input=1x3x224x224."
        )
    name, dims_text = match.groups()
    dims = tuple(int(d) for d in re.split(r"\s*[x,]\s*", dims_text))
    if any(d <= 0 for d in dims):
        raise BadInputError(f"--input-shape '{spec}': every dimension must be positive.")
    return name, dims


def parse_input_shapes(specs: tuple[str, ...] | list[str]) -> dict[str, tuple[int, ...]]:
    """Parse repeated ``--input-shape`` flags; a name given twice is an error."""
    shapes: dict[str, tuple[int, ...]] = {}
    for spec in specs:
        name, dims = parse_input_shape(spec)
        if name in shapes:
            raise BadInputError(f"--input-shape gives input '{name}' twice.")
        shapes[name] = dims
    return shapes


@dataclass(frozen=True)
class CompileConfig:
    """Everything ``edgec compile`` needs, validated.

    Attributes:
        model: The teacher ONNX file.
        target: Target name or descriptor path.
        output: The bundle directory to create.
        budget_ms: Latency budget; when set, the gate runs after building.
        percentile: Which latency percentile the budget applies to.
        input_shapes: Static shapes for inputs with dynamic dimensions.
        precision: ``fp32`` (default), ``fp16``, ``int8`` or ``auto``.
        backend: ``auto`` (the target's preference) or a backend name.
        data: ``--data`` source (``digits`` or an ``.npz`` path) for accuracy.
        force: Replace an existing bundle.
        archive: Also write ``<output>.tar.gz``.
        seed: Seed for everything random (splits, inputs, training).
        measure_seconds: Longest time to spend timing one stage on this machine.
    """

    model: Path
    target: str
    output: Path
    budget_ms: float | None = None
    percentile: int = 99
    input_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    precision: str = "fp32"
    backend: str = "auto"
    data: str | None = None
    force: bool = False
    archive: bool = False
    seed: int = 0
    measure_seconds: float = 10.0

    def __post_init__(self) -> None:
        if self.budget_ms is not None and self.budget_ms <= 0:
            raise BadInputError(f"--budget-ms must be positive, got {self.budget_ms}.")
        if self.percentile not in PERCENTILES:
            raise BadInputError(f"--percentile must be 50, 90 or 99, got {self.percentile}.")
        if self.measure_seconds <= 0:
            raise BadInputError(f"--measure-seconds must be positive, got {self.measure_seconds}.")
        if self.precision not in PRECISIONS:
            raise BadInputError(
                f"--precision must be one of {', '.join(PRECISIONS)}, got '{self.precision}'."
            )
