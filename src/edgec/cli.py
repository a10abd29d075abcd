"""The ``edgec`` command line: click commands that turn flags into a config and call the API.

No logic lives here. Every command maps :class:`~edgec.errors.EdgecError` to one sentence on
stderr and its exit code (2 bad input, 1 gate failed); anything else is a bug (exit 3) and
shows a traceback only with ``-v``.
"""

from __future__ import annotations

import functools
import json
import logging
import sys
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from edgec.errors import EXIT_GATE_FAILED, EXIT_INTERNAL, EdgecError

# Piped output (CI logs) gets a wide table instead of rich's 80-column default.
_out = Console(width=None if sys.stdout.isatty() else 120)
_err = Console(stderr=True, width=None if sys.stderr.isatty() else 160)


def _print_json(data) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def _handle_errors(func):
    """Turn edgec errors into one line and an exit code; bugs into exit 3."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except EdgecError as err:
            _err.print(f"[bold red]error:[/bold red] {err}", highlight=False, soft_wrap=True)
            sys.exit(err.exit_code)
        except KeyboardInterrupt:
            _err.print("interrupted")
            sys.exit(130)
        except Exception as err:  # a bug: say so, keep the traceback for -v
            if logging.getLogger().isEnabledFor(logging.DEBUG):
                _err.print_exception()
            _err.print(
                f"[bold red]internal error:[/bold red] {type(err).__name__}: {err} "
                "(this is a bug in edgec; rerun with -v for the traceback and report it)",
                highlight=False,
                soft_wrap=True,
            )
            sys.exit(EXIT_INTERNAL)

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="Log more (-v info, -vv debug).")
@click.version_option(package_name="edgec")
def main(verbose: int) -> None:
    """edgec compiles a trained ONNX model into a bundle for an edge device that meets a
    latency budget, and gates CI on that budget.

    \b
    Exit codes: 0 success, 1 budget (gate) failed, 2 bad input or usage, 3 internal error.
    """
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


# ---------------------------------------------------------------------------------- targets
@main.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@click.pass_context
@_handle_errors
def targets(ctx: click.Context, as_json: bool) -> None:
    """List the device registry and which backends work on this machine."""
    if ctx.invoked_subcommand is not None:
        return
    from edgec.targets import availability, load_target, shipped_target_names

    rows = []
    for name in shipped_target_names():
        target = load_target(name)
        backends = {b: availability(b) for b in target.backends}
        rows.append((target, backends))
    if as_json:
        _print_json(
            [
                {
                    **t.summary(),
                    "description": t.description,
                    "backends": {b: {"usable": ok, "why": why} for b, (ok, why) in bs.items()},
                }
                for t, bs in rows
            ]
        )
        return
    table = Table(title="edgec targets")
    for column in ("name", "kind", "description", "backends (usable here)", "gateway"):
        table.add_column(column)
    notes: dict[str, str] = {}
    for target, backends in rows:
        shown = []
        for name, (ok, why) in backends.items():
            shown.append(f"[green]{name}[/green]" if ok else f"[red]{name}[/red]")
            if not ok:
                notes[name] = why
        gateway = target.gateway.target if target.gateway else ""
        table.add_row(target.name, target.kind, target.description, " ".join(shown), gateway)
    _out.print(table)
    for name, why in sorted(notes.items()):
        _out.print(f"[red]{name}[/red] not usable here: {why}", highlight=False)


@targets.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@_handle_errors
def targets_show(name: str, as_json: bool) -> None:
    """Show one target's descriptor (NAME or a path to a descriptor YAML)."""
    import yaml

    from edgec.targets import load_target

    target = load_target(name)
    data = target.model_dump(mode="json", exclude_none=True)
    if as_json:
        _print_json(data)
    else:
        click.echo(yaml.safe_dump(data, sort_keys=False).rstrip())


# ---------------------------------------------------------------------------------- compile
@main.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("-t", "--target", required=True, help="Target name (see `edgec targets`) or YAML.")
@click.option("-o", "--output", type=click.Path(path_type=Path), help="Bundle directory.")
@click.option("--budget-ms", type=float, help="Latency budget; gate the bundle after building.")
@click.option(
    "--percentile",
    type=click.Choice(["50", "90", "99"]),
    default="99",
    show_default=True,
    help="Latency percentile the budget applies to.",
)
@click.option(
    "--input-shape",
    "input_shapes",
    multiple=True,
    metavar="NAME=DIMS",
    help="Fix a dynamic input's shape, e.g. input=1x3x224x224 (repeatable).",
)
@click.option(
    "--precision",
    type=click.Choice(["fp32", "fp16", "int8", "auto"]),
    default="fp32",
    show_default=True,
    help="Numeric precision of the stages.",
)
@click.option(
    "--backend",
    default="auto",
    show_default=True,
    help="auto (the target's preference) or a backend name.",
)
@click.option("--data", help="Data for accuracy: 'digits' or an .npz with x (and y).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for everything random.")
@click.option(
    "--measure-seconds",
    type=float,
    default=10.0,
    show_default=True,
    help="Longest time spent timing one stage on this machine.",
)
@click.option("--force", is_flag=True, help="Replace an existing bundle.")
@click.option("--archive", is_flag=True, help="Also write BUNDLE.tar.gz.")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@_handle_errors
def compile(  # noqa: A001 - the command is called compile
    model: Path,
    target: str,
    output: Path | None,
    budget_ms: float | None,
    percentile: str,
    input_shapes: tuple[str, ...],
    precision: str,
    backend: str,
    data: str | None,
    seed: int,
    measure_seconds: float,
    force: bool,
    archive: bool,
    as_json: bool,
) -> None:
    """Compile MODEL (ONNX) into a bundle for a target.

    \b
    Example:
      edgec compile examples/digits/teacher.onnx --target raspberry-pi-4 -o out/rpi4 --budget-ms 5
    """
    from edgec.compiler import compile_model
    from edgec.compiler.progress import Reporter
    from edgec.config import CompileConfig, parse_input_shapes

    config = CompileConfig(
        model=model,
        target=target,
        output=output or Path("out") / f"{model.stem}-{Path(target).stem}",
        budget_ms=budget_ms,
        percentile=int(percentile),
        input_shapes=parse_input_shapes(input_shapes),
        precision=precision,
        backend=backend,
        data=data,
        force=force,
        archive=archive,
        seed=seed,
        measure_seconds=measure_seconds,
    )
    result = compile_model(config, Reporter(quiet=as_json))
    if as_json:
        _print_json(result.to_json())
    else:
        _print_summary(result)
    if result.gate is not None and not result.gate.passed:
        if not as_json:
            _err.print(f"[bold red]gate failed:[/bold red] {result.gate.summary}", highlight=False)
        sys.exit(EXIT_GATE_FAILED)


def _print_summary(result) -> None:
    manifest = result.manifest
    table = Table(title=f"bundle {result.bundle} for {manifest['target']['name']}")
    for column in (
        "stage",
        "tier",
        "backend",
        "precision",
        "MACs",
        "p50 ms",
        "p99 ms",
        "source",
        "accuracy",
    ):
        table.add_column(column)
    for s in manifest["stages"]:
        lat = s["latency_ms"]
        acc = "—" if s.get("accuracy") is None else f"{100 * s['accuracy']:.2f}%"
        table.add_row(
            s["name"],
            s["tier"],
            s["backend"],
            s["precision"],
            f"{s['macs']:,}",
            f"{lat['p50']:.3f}",
            f"{lat['p99']:.3f}",
            lat["source"],
            acc,
        )
    _out.print(table)
    if result.archive:
        _out.print(f"archive: {result.archive}")
    if result.gate is not None:
        colour = "green" if result.gate.passed else "red"
        _out.print(f"[{colour}]{result.gate.summary}[/{colour}]", highlight=False)


# ---------------------------------------------------------------------------------- check
@main.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--budget-ms", type=float, required=True, help="Latency budget in milliseconds.")
@click.option(
    "--percentile",
    type=click.Choice(["50", "90", "99"]),
    default="99",
    show_default=True,
    help="Latency percentile the budget applies to.",
)
@click.option("--junit", type=click.Path(path_type=Path), help="Write a JUnit XML report.")
@click.option(
    "--require-measured",
    is_flag=True,
    help="Fail when the latency is only estimated, not measured.",
)
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@_handle_errors
def check(
    bundle: Path,
    budget_ms: float,
    percentile: str,
    junit: Path | None,
    require_measured: bool,
    as_json: bool,
) -> None:
    """CI gate: exit 0 when BUNDLE meets the latency budget, 1 when it does not."""
    from edgec.compiler import check_bundle

    result = check_bundle(bundle, budget_ms, int(percentile), require_measured, junit)
    if as_json:
        _print_json(result.to_json())
    else:
        for index, item in enumerate(result.checks):
            mark = "[green]PASS[/green]" if item.passed else "[red]FAIL[/red]"
            style = "" if index == 0 else "[dim]"
            _out.print(f"{mark} {style}{item.message}", highlight=False)
    if not result.passed:
        sys.exit(EXIT_GATE_FAILED)


if __name__ == "__main__":
    main()
