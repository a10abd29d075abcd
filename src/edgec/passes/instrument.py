"""Pass instrumentation kept outside the passes: timing, node counts, IR dumps.

:class:`PassInstrument` wraps each pass of a pipeline in a thin pass that times the inner
pass, counts nodes before and after, and (when ``dump_dir`` is set) writes the model after the
pass as ``NNN-<pipeline>-<Pass>.onnx``. ``edgec compile --time-passes`` prints
:meth:`PassInstrument.table`; ``--dump-ir DIR`` sets ``dump_dir``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import onnx_ir as ir


@dataclass(frozen=True)
class PassRecord:
    """One run of one pass.

    Attributes:
        pipeline: The pipeline it ran in.
        step: Which repetition of the pipeline (0 first).
        name: The pass's class name.
        seconds: Wall time of the pass.
        nodes_before: Nodes in the model (subgraphs included) before the pass.
        nodes_after: Nodes after the pass.
        modified: What the pass reported.
        dump: The file written after the pass, when dumping.
    """

    pipeline: str
    step: int
    name: str
    seconds: float
    nodes_before: int
    nodes_after: int
    modified: bool
    dump: str | None = None

    def to_json(self) -> dict:
        """JSON-friendly form."""
        return asdict(self)


def count_nodes(model: ir.Model) -> int:
    """Nodes in ``model``, including those in subgraphs."""
    return sum(1 for _ in ir.traversal.RecursiveGraphIterator(model.graph))


@dataclass
class PassInstrument:
    """Collects a :class:`PassRecord` per pass run and optionally dumps the IR.

    Attributes:
        dump_dir: Directory for a model file after every pass (``None``: no dumps).
        records: The runs so far, in order.
    """

    dump_dir: Path | None = None
    records: list[PassRecord] = field(default_factory=list)

    def wrap(self, pipeline: str, passes: Sequence[ir.passes.PassBase]) -> list[ir.passes.PassBase]:
        """The passes, each wrapped so its runs are recorded under ``pipeline``."""
        return [_Instrumented(p, pipeline, self) for p in passes]

    def record(self, rec: PassRecord) -> None:
        """Add one run."""
        self.records.append(rec)

    def dump(self, model: ir.Model, pipeline: str, name: str) -> str | None:
        """Write ``model`` after pass ``name`` when dumping; return the path."""
        if self.dump_dir is None:
            return None
        self.dump_dir.mkdir(parents=True, exist_ok=True)
        path = self.dump_dir / f"{len(self.records):03d}-{pipeline}-{name}.onnx"
        ir.save(model, path)
        return str(path)

    def table(self) -> str:
        """The records as :func:`format_pass_table` prints them."""
        return format_pass_table(self.records)

    def to_json(self) -> list[dict]:
        """All records as JSON-friendly dicts."""
        return [r.to_json() for r in self.records]


def format_pass_table(records: Sequence[PassRecord]) -> str:
    """A fixed-width text table: one row per pass run, then the total time and node change."""
    lines = [f"{'pipeline':<10} {'step':>4} {'pass':<36} {'ms':>9} {'nodes':>14} modified"]
    for r in records:
        delta = r.nodes_after - r.nodes_before
        lines.append(
            f"{r.pipeline:<10} {r.step:>4} {r.name:<36} {r.seconds * 1e3:>9.1f} "
            f"{r.nodes_after:>7} ({delta:+d}) {'yes' if r.modified else 'no'}"
        )
    if records:
        total = sum(r.seconds for r in records)
        first, last = records[0].nodes_before, records[-1].nodes_after
        lines.append(f"total {total * 1e3:.1f} ms in passes, nodes {first} -> {last}")
    return "\n".join(lines)


class _Instrumented(ir.passes.PassBase):
    """Runs ``inner`` and records its time, node counts and result."""

    def __init__(self, inner: ir.passes.PassBase, pipeline: str, instrument: PassInstrument):
        self.inner = inner
        self.pipeline = pipeline
        self.instrument = instrument
        self.runs = 0

    @property
    def in_place(self) -> bool:
        return self.inner.in_place

    @property
    def changes_input(self) -> bool:
        return self.inner.changes_input

    def __repr__(self) -> str:
        return repr(self.inner)

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        name = type(self.inner).__name__
        before = count_nodes(model)
        start = time.perf_counter()
        result = self.inner(model)
        seconds = time.perf_counter() - start
        dump = self.instrument.dump(result.model, self.pipeline, name)
        self.instrument.record(
            PassRecord(
                pipeline=self.pipeline,
                step=self.runs,
                name=name,
                seconds=seconds,
                nodes_before=before,
                nodes_after=count_nodes(result.model),
                modified=result.modified,
                dump=dump,
            )
        )
        self.runs += 1
        return result
