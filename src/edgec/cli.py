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
from rich.markup import escape
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
            # escape: messages quote user text, which may contain [brackets]
            message = escape(str(err))
            _err.print(f"[bold red]error:[/bold red] {message}", highlight=False, soft_wrap=True)
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
    Exit codes: 0 success, 1 budget (gate) failed or bundle does not verify, 2 bad input or
    usage, 3 internal error.
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
    default="auto",
    show_default=True,
    help="Precision of the stages: auto picks, per stage, the faster of FP32 and INT8 that "
    "passes the accuracy guard (INT8 needs --data); int8 forces it.",
)
@click.option(
    "--calibration",
    type=click.Choice(["minmax", "entropy", "percentile"]),
    default="minmax",
    show_default=True,
    help="INT8 calibration method (ONNX Runtime's calibrators).",
)
@click.option(
    "--calib-samples",
    type=int,
    default=300,
    show_default=True,
    help="Most calibration inputs, drawn from the training split of --data.",
)
@click.option(
    "--max-accuracy-drop",
    type=float,
    default=1.0,
    show_default=True,
    help="Largest accuracy drop INT8 may cause, in points (without labels: disagreement with "
    "FP32 where FP32 is confident); worse layers are kept in FP32.",
)
@click.option(
    "--min-sqnr-db",
    type=float,
    default=10.0,
    show_default=True,
    help="Without labels, the SQNR of INT8 logits against FP32 that INT8 must reach.",
)
@click.option(
    "--backend",
    default="auto",
    show_default=True,
    help="auto, onnxruntime, tvm (or another registered backend). auto: on this machine, "
    "build with each usable backend and keep the fastest (TVM only when tuned); with "
    "--device, TVM measured on the device; elsewhere the target's preference.",
)
@click.option(
    "--tune-trials",
    type=int,
    default=0,
    show_default=True,
    help="MetaSchedule autotuning trials per stage for the tvm backend (0: untuned).",
)
@click.option(
    "--tuning-cache",
    type=click.Path(path_type=Path),
    help="Directory of TVM tuning records: reused by later compiles of the same model.",
)
@click.option(
    "--device",
    metavar="URL",
    help="Measure (and tune) on the real device through TVM RPC: rpc://HOST:PORT or "
    "tracker://HOST:PORT/KEY.",
)
@click.option("--data", help="Data for accuracy: 'digits' or an .npz with x (and y).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for everything random.")
@click.option(
    "--students",
    default="auto",
    show_default=True,
    help="Students to derive (needs --data and the train extra): auto (sized from the target), "
    "none, or MAC ratios of the teacher such as 0.1,0.3.",
)
@click.option(
    "--distill-epochs",
    type=int,
    default=40,
    show_default=True,
    help="Most epochs each student trains for (early stopping may end sooner).",
)
@click.option(
    "--temperature",
    type=float,
    default=4.0,
    show_default=True,
    help="Distillation temperature T.",
)
@click.option(
    "--alpha",
    type=float,
    default=0.5,
    show_default=True,
    help="Weight of the label loss; the distillation loss gets 1 - alpha (labels optional).",
)
@click.option(
    "--measure-seconds",
    type=float,
    default=10.0,
    show_default=True,
    help="Longest time spent timing one stage on this machine.",
)
@click.option(
    "--sign-key",
    type=click.Path(path_type=Path),
    help="Sign the bundle with this private key (from `edgec keygen`).",
)
@click.option(
    "--preprocess",
    metavar="SPEC",
    help="Fuse camera-frame pre-processing into the model, e.g. "
    "'uint8,nhwc,bgr,size=480x640,resize=bilinear,mean=127.5,scale=0.0078125'; "
    "the bundle's input becomes the frame (see the README).",
)
@click.option(
    "--time-passes", is_flag=True, help="Print each graph pass's time and node-count change."
)
@click.option(
    "--dump-ir",
    type=click.Path(path_type=Path),
    metavar="DIR",
    help="Write the model after every graph pass into DIR.",
)
@click.option(
    "--confidence",
    type=click.Choice(["max-prob", "margin", "entropy"]),
    default="max-prob",
    show_default=True,
    help="Confidence measure a cascade stage answers on (vs its threshold).",
)
@click.option(
    "--fusion",
    type=click.Choice(["replace", "weighted"]),
    default="replace",
    show_default=True,
    help="Combine a gateway answer with the device's: replace it, or weight both.",
)
@click.option(
    "--accuracy-tolerance",
    type=float,
    default=0.5,
    show_default=True,
    help="Points of validation accuracy the cascade may give up for a cheaper policy.",
)
@click.option(
    "--partition",
    default="off",
    show_default=True,
    metavar="auto|off|CUT",
    help="Split the teacher between device and gateway: auto picks the cut with the lowest "
    "--objective, or name one (a tensor, gateway-only, device-only; see `edgec inspect "
    "--partition`). The device runs the first layers and sends the intermediate tensor.",
)
@click.option(
    "--objective",
    type=click.Choice(["latency", "energy"]),
    default="latency",
    show_default=True,
    help="What --partition auto minimises: end-to-end latency or device energy.",
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
    calibration: str,
    calib_samples: int,
    max_accuracy_drop: float,
    min_sqnr_db: float,
    backend: str,
    data: str | None,
    seed: int,
    students: str,
    distill_epochs: int,
    temperature: float,
    alpha: float,
    measure_seconds: float,
    sign_key: Path | None,
    preprocess: str | None,
    time_passes: bool,
    dump_ir: Path | None,
    confidence: str,
    fusion: str,
    accuracy_tolerance: float,
    tune_trials: int,
    tuning_cache: Path | None,
    device: str | None,
    partition: str,
    objective: str,
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
    from edgec.config import CompileConfig, parse_input_shapes, parse_students
    from edgec.kernels.preprocess import parse_preprocess
    from edgec.passes.instrument import format_pass_table

    config = CompileConfig(
        model=model,
        target=target,
        output=output or Path("out") / f"{model.stem}-{Path(target).stem}",
        budget_ms=budget_ms,
        percentile=int(percentile),
        input_shapes=parse_input_shapes(input_shapes),
        precision=precision,
        calibration=calibration,
        calib_samples=calib_samples,
        max_accuracy_drop=max_accuracy_drop,
        min_sqnr_db=min_sqnr_db,
        backend=backend,
        data=data,
        force=force,
        archive=archive,
        seed=seed,
        students=parse_students(students),
        distill_epochs=distill_epochs,
        temperature=temperature,
        alpha=alpha,
        measure_seconds=measure_seconds,
        sign_key=sign_key,
        preprocess=parse_preprocess(preprocess) if preprocess is not None else None,
        time_passes=time_passes,
        dump_ir=dump_ir,
        confidence=confidence,
        fusion=fusion,
        accuracy_tolerance=accuracy_tolerance,
        tune_trials=tune_trials,
        tuning_cache=tuning_cache,
        device=device,
        partition=partition,
        objective=objective,
    )
    result = compile_model(config, Reporter(quiet=as_json))
    if time_passes and not as_json:
        click.echo(format_pass_table(result.passes), err=True)
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
    partition = manifest.get("partition")
    if partition is not None:
        estimate = partition["estimate"]
        sent = f", sends {partition['tensor']}" if partition["tensor"] else ""
        _out.print(
            f"partition: {partition['cut']} ({partition['encoding']}{sent}); {estimate['source']} "
            f"{estimate['total_ms']:.3f} ms end to end",
            highlight=False,
        )
    if result.archive:
        _out.print(f"archive: {result.archive}")
    if result.signed_by:
        _out.print(f"signed with key {result.signed_by}")
    if result.gate is not None:
        colour = "green" if result.gate.passed else "red"
        _out.print(f"[{colour}]{result.gate.summary}[/{colour}]", highlight=False)
    for note in result.notes:  # plain echo: never wrapped, no markup
        click.echo(f"note: {note}", err=True)


# ---------------------------------------------------------------------------------- inspect
@main.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("-t", "--target", default="host", show_default=True, help="Target name or YAML.")
@click.option(
    "--input-shape",
    "input_shapes",
    multiple=True,
    metavar="NAME=DIMS",
    help="Fix a dynamic input's shape, e.g. input=1x3x224x224 (repeatable).",
)
@click.option("--raw", is_flag=True, help="Inspect the model as given, not its canonical form.")
@click.option("--top", type=int, default=10, show_default=True, help="How many costliest layers.")
@click.option(
    "--precision",
    type=click.Choice(["fp32", "int8"]),
    default="fp32",
    show_default=True,
    help="Estimate at this precision; int8 also explains what would make INT8 slow here.",
)
@click.option(
    "--partition",
    "show_partition",
    is_flag=True,
    help="Also cost every device/gateway cut over the target's link (estimated).",
)
@click.option(
    "--objective",
    type=click.Choice(["latency", "energy"]),
    default="latency",
    show_default=True,
    help="What the partition choice minimises: end-to-end latency or device energy.",
)
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@_handle_errors
def inspect(
    model: Path,
    target: str,
    input_shapes: tuple[str, ...],
    raw: bool,
    top: int,
    precision: str,
    show_partition: bool,
    objective: str,
    as_json: bool,
) -> None:
    """Per-layer table of MODEL on a target: shapes, MACs, parameters, activation bytes,
    estimated latency and which backends support each op; then totals and the top layers.

    \b
    Example:
      edgec inspect examples/digits/teacher.onnx --target jetson-nano
    """
    from edgec.compiler.inspect.inspection import inspect_model
    from edgec.config import parse_input_shapes

    shapes = parse_input_shapes(input_shapes)
    report = inspect_model(model, target, shapes, canonical=not raw, precision=precision, top=top)
    explanation = None
    if precision == "int8":
        from edgec.compiler.int8.explain import explain_model_int8

        explanation = explain_model_int8(model, target, shapes)
    partition = None
    if show_partition:
        from edgec.compiler.planning.partition import partition_model

        partition = partition_model(model, target, shapes, objective=objective)
    if as_json:
        data = report.to_json()
        if explanation is not None:
            data["int8_explanation"] = explanation
        if partition is not None:
            data["partition"] = partition.to_json()
        _print_json(data)
        return
    _print_inspect(report)
    if explanation is not None:
        _out.print(f"[bold]INT8 on {report.target}[/bold]")
        for line in explanation:
            _out.print(f"  - {line}", highlight=False)
    if partition is not None:
        _print_partition(partition)


def _print_partition(plan) -> None:
    link = plan.link
    table = Table(
        title=f"Cuts over a {link.rtt_ms:g} ms / {link.bandwidth_mbps:g} Mbps link "
        f"(objective: {plan.objective}; * measured on this machine, others estimated)"
    )
    for column in (
        "cut",
        "enc.",
        "sent bytes",
        "device ms",
        "link ms",
        "gateway ms",
        "total ms",
        "device mJ",
        "fits",
    ):
        table.add_column(column)
    for option in plan.options:
        chosen = option is plan.chosen
        style = "bold green" if chosen else ""
        table.add_row(
            escape(option.cut.name)
            + ("*" if option.source != "estimated" else "")
            + (" ←" if chosen else ""),
            option.encoding,
            f"{option.payload_bytes:,}",
            f"{option.device_ms:.3f}",
            f"{option.transfer_ms:.3f}",
            f"{option.gateway_ms:.3f}",
            f"{option.total_ms:.3f}",
            f"{option.device_energy_mj:.2f}",
            "yes" if option.feasible else "no",
            style=style,
        )
    _out.print(table)


def _print_inspect(report) -> None:
    form = "as given" if not report.canonical else "canonical form"
    table = Table(
        title=f"{escape(report.model)} ({form}) on {report.target}, "
        f"latency estimated for {report.backend} {report.precision}"
    )
    columns = ("#", "name", "op", "output", "MACs", "params", "act. bytes", "est. ms")
    for column in (*columns, "ort/tvm/trt"):
        table.add_column(column, justify="right" if column in ("#", "MACs", "params") else "left")

    def marks(backends: dict[str, bool]) -> str:
        return " ".join(
            "[green]y[/green]" if backends[b] else "[red]n[/red]"
            for b in ("onnxruntime", "tvm", "tensorrt")
        )

    for index, layer in enumerate(report.layers):
        op = f"{layer.op} [{layer.fusion}]" if layer.fusion else layer.op
        table.add_row(
            str(index),
            layer.name,
            op,
            "x".join(str(d) for d in layer.output_shape),
            f"{layer.macs:,}",
            f"{layer.params:,}",
            f"{layer.activation_bytes:,}",
            f"{layer.latency_ms:.4f}",
            marks(layer.backends),
        )
    _out.print(table)
    totals = report.totals()
    _out.print(
        f"total: {totals['nodes']} nodes, {totals['macs']:,} MACs, {totals['params']:,} "
        f"parameters, {totals['activation_bytes']:,} activation bytes, "
        f"{totals['latency_ms']:.3f} ms (estimated)",
        highlight=False,
    )
    top = Table(title=f"top {len(report.top_layers())} layers by estimated latency")
    for column in ("name", "op", "MACs", "est. ms", "share"):
        top.add_column(column)
    for layer in report.top_layers():
        share = layer.latency_ms / totals["latency_ms"] if totals["latency_ms"] else 0.0
        top.add_row(
            layer.name, layer.op, f"{layer.macs:,}", f"{layer.latency_ms:.4f}", f"{share:.1%}"
        )
    _out.print(top)
    for backend, ops in report.unsupported().items():
        _out.print(
            f"[red]{backend}[/red] lacks: {', '.join(ops)} (source: {report.sources[backend]})",
            highlight=False,
        )


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


# ---------------------------------------------------------------------------------- trust
@main.command()
@click.argument("directory", type=click.Path(path_type=Path))
@click.option("--force", is_flag=True, help="Replace an existing key pair.")
@_handle_errors
def keygen(directory: Path, force: bool) -> None:
    """Create an ed25519 key pair: DIRECTORY/edgec.key (private, 0600) and edgec.pub."""
    from edgec.bundle import trust

    private, public = trust.generate_keys(directory, force)
    kid = trust.key_id(trust.load_public_key(public))
    _out.print(f"private key: {private} (keep it secret)\npublic key:  {public}\nkey id: {kid}")


@main.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option(
    "--key", type=click.Path(path_type=Path), required=True, help="Private key (edgec.key)."
)
@_handle_errors
def sign(bundle: Path, key: Path) -> None:
    """Sign BUNDLE's manifest (its files must match it) into BUNDLE/manifest.sig."""
    from edgec.bundle import trust

    path = trust.sign_bundle(bundle, key)
    _out.print(f"signed: {path}", highlight=False)


@main.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option(
    "--key",
    type=click.Path(path_type=Path),
    help="Public key (edgec.pub); without it only file integrity is checked.",
)
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@_handle_errors
def verify(bundle: Path, key: Path | None, as_json: bool) -> None:
    """Exit 0 when BUNDLE verifies (signature, every file, no extra file), else 1 with why."""
    from edgec.bundle import trust

    result = trust.verify_bundle(bundle, key)
    if as_json:
        _print_json(result.to_json())
        if not result.valid:
            sys.exit(EXIT_GATE_FAILED)
        return
    trust.require_valid(result)
    _out.print(f"[green]OK[/green] {result.summary}", highlight=False)


@main.command()
@click.argument("bundle", type=click.Path(path_type=Path), required=False)
@click.option(
    "--into",
    type=click.Path(path_type=Path),
    required=True,
    help="Install directory (holds current, previous and versions/).",
)
@click.option(
    "--key",
    type=click.Path(path_type=Path),
    help="Public key (edgec.pub); when given, only bundles it signed are installed.",
)
@click.option("--rollback", is_flag=True, help="Make the previous version current again.")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@_handle_errors
def install(
    bundle: Path | None, into: Path, key: Path | None, rollback: bool, as_json: bool
) -> None:
    """Verify BUNDLE, copy it into INTO/versions/<hash> and switch INTO/current atomically.

    \b
    Examples:
      edgec install out/rpi4 --into /opt/models --key edgec.pub
      edgec install --rollback --into /opt/models
    """
    from edgec.bundle import install as installer
    from edgec.errors import BadInputError

    if rollback == (bundle is not None):
        raise BadInputError("Give either a BUNDLE to install or --rollback, not both or neither.")
    if rollback:
        result = installer.rollback(into, key)
    else:
        result = installer.install_bundle(bundle, into, key)
    if as_json:
        _print_json(result.to_json())
    else:
        _out.print(result.summary, highlight=False)


# ---------------------------------------------------------------------------------- runtime
@main.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--gateway", metavar="URL", help="Gateway to offload to, e.g. http://gw:8080.")
@click.option(
    "--key",
    type=click.Path(path_type=Path),
    help="Public key (edgec.pub): refuse a bundle that does not verify against it.",
)
@click.option("--device-id", help="This device's name in logs and requests.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per input, one a line.")
@_handle_errors
def run(
    bundle: Path,
    inputs: tuple[Path, ...],
    gateway: str | None,
    key: Path | None,
    device_id: str | None,
    as_json: bool,
) -> None:
    """Run INPUTS (.npy/.npz batches, images) through BUNDLE's generated device runtime.

    \b
    Examples:
      edgec run out/rpi4 frames.npy --json
      edgec run out/rpi4 photo.png --gateway http://gateway:8080
    """
    from edgec.bundle.launch import run_bundle

    try:
        for item in run_bundle(bundle, list(inputs), gateway, key, device_id):
            if as_json:
                click.echo(json.dumps(item))
            else:
                click.echo(
                    f"{item['input']}: class {item['prediction']} "
                    f"(p={item['confidence']:.3f}) from {item['stage']} "
                    f"in {item['latency_ms']:.3f} ms [{item['route']}]"
                )
    except BrokenPipeError:  # the reader (e.g. `| head`) has gone: stop quietly
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


@main.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option(
    "--tier",
    type=click.Choice(["gateway"]),
    default="gateway",
    show_default=True,
    help="The tier to serve (devices run `edgec run`).",
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=int, default=8080, show_default=True, help="Port (0: any free).")
@click.option("--queue-size", type=int, help="Requests that may wait; beyond that, 429.")
@click.option("--workers", type=int, help="Inference threads.")
@click.option(
    "--key",
    type=click.Path(path_type=Path),
    help="Public key (edgec.pub): refuse a bundle that does not verify against it.",
)
@_handle_errors
def serve(
    bundle: Path,
    tier: str,
    host: str,
    port: int,
    queue_size: int | None,
    workers: int | None,
    key: Path | None,
) -> None:
    """Serve BUNDLE's gateway stages with its generated gateway server (until SIGTERM).

    \b
    Example:
      edgec serve out/rpi4 --tier gateway --host 0.0.0.0 --port 8080
    """
    from edgec.bundle.launch import serve_bundle

    del tier  # only the gateway tier is served
    serve_bundle(
        bundle,
        host,
        port,
        queue_size,
        workers,
        key,
        announce=lambda line: click.echo(line),
    )


if __name__ == "__main__":
    main()
