"""``edgec compile``: flags become a :class:`~edgec.config.CompileConfig`, then the API runs.

The summary (stages table, partition, archive, signature, gate verdict) goes to stdout; notes
about fallbacks go to stderr, one line each.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click
from rich.markup import escape
from rich.table import Table

from edgec.cli import options
from edgec.cli.common import err, handle_errors, out, print_json, warn
from edgec.errors import EXIT_GATE_FAILED


@click.command("compile")
@options.model_argument()
@options.target_option(required=True)
@click.option("-o", "--output", type=click.Path(path_type=Path), help="Bundle directory.")
@options.budget_option("Latency budget; gate the bundle after building.")
@options.percentile_option()
@options.input_shape_option()
@options.int8_options
@options.backend_options
@options.data_and_student_options
@options.graph_options
@options.cascade_options
@options.bundle_output_options
@options.json_option()
@handle_errors
def compile_command(model: Path, output: Path | None, as_json: bool, **flags) -> None:
    """Compile MODEL (ONNX) into a bundle for a target.

    A comma-separated --target list builds a zoo: one bundle per target in OUTPUT/<target>/
    and OUTPUT/index.json, for `edgec serve --tier registry` (docs/fleet.md).

    \b
    Examples:
      edgec compile examples/digits/teacher.onnx --target raspberry-pi-4 -o out/rpi4 --budget-ms 5
      edgec compile examples/digits/teacher.onnx --target raspberry-pi-4,jetson-nano -o zoo
    """
    from edgec.compiler import compile_model
    from edgec.compiler.progress import Reporter
    from edgec.passes.instrument import format_pass_table

    if "," in flags["target"]:  # a list of targets: a zoo (edgec.compiler.zoo)
        return compile_zoo_command(model, output, as_json, flags)
    config = build_config(model, output, flags)
    result = compile_model(config, Reporter(quiet=as_json, console=err))
    if as_json:
        print_json(result.to_json())
    else:
        if config.time_passes:
            warn(format_pass_table(result.passes))
        print_summary(result)
    if result.gate is not None and not result.gate.passed:
        if not as_json:
            warn(f"gate failed: {result.gate.summary}")
        sys.exit(EXIT_GATE_FAILED)


def compile_zoo_command(model: Path, output: Path | None, as_json: bool, flags: dict) -> None:
    """``--target a,b,c``: one bundle per target in OUTPUT/<target>/ and OUTPUT/index.json."""
    from edgec.compiler.progress import Reporter
    from edgec.compiler.zoo import compile_zoo

    config = build_config(model, output or Path("out") / f"{model.stem}-zoo", flags)
    result = compile_zoo(config, Reporter(quiet=as_json, console=err))
    if config.time_passes and result.results:  # the passes ran once, for every target
        from edgec.passes.instrument import format_pass_table

        warn(format_pass_table(result.results[0].passes))
    if as_json:
        print_json(result.to_json())
    else:
        for bundle in result.results:
            print_summary(bundle)
        click.echo(f"zoo: {result.zoo} ({len(result.results)} targets, {result.zoo}/index.json)")
    for bundle in result.results:
        if bundle.gate is not None and not bundle.gate.passed and not as_json:
            warn(f"gate failed for {bundle.manifest['target']['name']}: {bundle.gate.summary}")
    if result.gate_failed:
        sys.exit(EXIT_GATE_FAILED)


def build_config(model: Path, output: Path | None, flags: dict):
    """The :class:`~edgec.config.CompileConfig` for the command's flags (text parsed here)."""
    from edgec.config import (
        CompileConfig,
        parse_input_shapes,
        parse_student_files,
        parse_students,
    )
    from edgec.kernels.preprocess import parse_preprocess

    preprocess = flags.pop("preprocess")
    return CompileConfig(
        model=model,
        output=output or Path("out") / f"{model.stem}-{Path(flags['target']).stem}",
        **{
            **flags,
            "percentile": int(flags["percentile"]),
            "input_shapes": parse_input_shapes(flags["input_shapes"]),
            "students": parse_students(flags["students"]),
            "student_files": parse_student_files(flags["student_files"]),
            "preprocess": parse_preprocess(preprocess) if preprocess is not None else None,
        },
    )


def print_summary(result) -> None:
    """The human summary of a compile: stages, partition, archive, signature, notes, gate."""
    manifest = result.manifest
    table = Table(title=escape(f"bundle {result.bundle} for {manifest['target']['name']}"))
    columns = ("stage", "tier", "backend", "precision", "MACs", "p50 ms", "p99 ms", "source")
    for column in (*columns, "accuracy"):
        table.add_column(column)
    for s in manifest["stages"]:
        lat = s["latency_ms"]
        acc = "—" if s.get("accuracy") is None else f"{100 * s['accuracy']:.2f}%"
        table.add_row(
            escape(s["name"]),
            s["tier"],
            s["backend"],
            s["precision"],
            f"{s['macs']:,}",
            f"{lat['p50']:.3f}",
            f"{lat['p99']:.3f}",
            lat["source"],
            acc,
        )
    out.print(table)
    partition = manifest.get("partition")
    if partition is not None:
        estimate = partition["estimate"]
        sent = f", sends {partition['tensor']}" if partition["tensor"] else ""
        click.echo(
            f"partition: {partition['cut']} ({partition['encoding']}{sent}); "
            f"{estimate['source']} {estimate['total_ms']:.3f} ms end to end"
        )
    if result.archive:
        click.echo(f"archive: {result.archive}")
    if result.signed_by:
        click.echo(f"signed with key {result.signed_by}")
    for note in result.notes:
        warn(f"note: {note}")
    if result.gate is not None:
        colour = "green" if result.gate.passed else "red"
        out.print(f"[{colour}]{escape(result.gate.summary)}[/{colour}]")
