"""``edgec inspect``: the per-layer cost table of a model on a target (and its partition cuts)."""

from __future__ import annotations

from pathlib import Path

import click
from rich.markup import escape
from rich.table import Table

from edgec.cli import options
from edgec.cli.common import handle_errors, out, print_json


@click.command("inspect")
@options.model_argument()
@options.target_option(required=False)
@options.input_shape_option()
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
@options.objective_option("What the partition choice minimises: end-to-end latency or energy.")
@click.option(
    "--data", "data_source", help="With --sensitivity: 'digits' or an .npz with x to measure on."
)
@click.option(
    "--sensitivity",
    is_flag=True,
    help="With --precision int8 and --data: each compute layer's share of the INT8 output "
    "error (quantized alone, and kept FP32), worst first.",
)
@options.json_option()
@handle_errors
def inspect_command(
    model: Path,
    target: str,
    input_shapes: tuple[str, ...],
    raw: bool,
    top: int,
    precision: str,
    show_partition: bool,
    objective: str,
    data_source: str | None,
    sensitivity: bool,
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
    from edgec.errors import BadInputError

    if sensitivity and (precision != "int8" or not data_source):
        raise BadInputError("--sensitivity needs --precision int8 and --data to measure on.")
    shapes = parse_input_shapes(input_shapes)
    report = inspect_model(model, target, shapes, canonical=not raw, precision=precision, top=top)
    explanation = None
    if precision == "int8":
        from edgec.compiler.int8.explain import explain_model_int8

        explanation = explain_model_int8(model, target, shapes)
    layers = None
    if sensitivity:
        from edgec.compiler.int8.sensitivity import model_sensitivity

        layers = model_sensitivity(model, data_source, target, shapes)
    partition = None
    if show_partition:
        from edgec.compiler.planning.partition import partition_model

        partition = partition_model(model, target, shapes, objective=objective)
    if as_json:
        data = report.to_json()
        if explanation is not None:
            data["int8_explanation"] = explanation
        if layers is not None:
            data["int8_sensitivity"] = layers.to_json()
        if partition is not None:
            data["partition"] = partition.to_json()
        print_json(data)
        return
    _print_inspect(report)
    if explanation is not None:
        out.print(f"[bold]INT8 on {escape(report.target)}[/bold]")
        for line in explanation:
            click.echo(f"  - {line}")
    if layers is not None:
        _print_sensitivity(layers)
    if partition is not None:
        _print_partition(partition)


def _print_sensitivity(report) -> None:
    table = Table(
        title=f"INT8 sensitivity ({report.flavour.name}, {report.samples} held-out inputs; "
        f"fully quantized: {report.full_sqnr_db:.1f} dB output SQNR), worst first"
    )
    for column in ("layer", "op", "quantized alone dB", "kept FP32 dB", "gain dB"):
        table.add_column(column)
    for layer in report.layers:
        table.add_row(
            escape(layer.node),
            layer.op,
            f"{layer.alone_sqnr_db:.1f}",
            f"{layer.kept_fp32_sqnr_db:.1f}",
            f"{layer.gain_db:+.1f}",
        )
    out.print(table)


def _print_partition(plan) -> None:
    link = plan.link
    table = Table(
        title=f"Cuts over a {link.rtt_ms:g} ms / {link.bandwidth_mbps:g} Mbps link "
        f"(objective: {plan.objective}; * measured on this machine, others estimated)"
    )
    columns = ("cut", "enc.", "sent bytes", "device ms", "link ms", "gateway ms", "total ms")
    for column in (*columns, "device mJ", "fits"):
        table.add_column(column)
    for option in plan.options:
        chosen = option is plan.chosen
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
            style="bold green" if chosen else "",
        )
    out.print(table)


def _marks(backends: dict[str, bool]) -> str:
    return " ".join(
        "[green]y[/green]" if backends[b] else "[red]n[/red]"
        for b in ("onnxruntime", "tvm", "tensorrt")
    )


def _print_inspect(report) -> None:
    form = "as given" if not report.canonical else "canonical form"
    table = Table(
        title=f"{escape(report.model)} ({form}) on {escape(report.target)}, "
        f"latency estimated for {report.backend} {report.precision}"
    )
    columns = ("#", "name", "op", "output", "MACs", "params", "act. bytes", "est. ms")
    for column in (*columns, "ort/tvm/trt"):
        table.add_column(column, justify="right" if column in ("#", "MACs", "params") else "left")
    for index, layer in enumerate(report.layers):
        op = f"{layer.op} [{layer.fusion}]" if layer.fusion else layer.op
        table.add_row(
            str(index),
            escape(layer.name),
            escape(op),
            "x".join(str(d) for d in layer.output_shape),
            f"{layer.macs:,}",
            f"{layer.params:,}",
            f"{layer.activation_bytes:,}",
            f"{layer.latency_ms:.4f}",
            _marks(layer.backends),
        )
    out.print(table)
    totals = report.totals()
    click.echo(
        f"total: {totals['nodes']} nodes, {totals['macs']:,} MACs, {totals['params']:,} "
        f"parameters, {totals['activation_bytes']:,} activation bytes, "
        f"{totals['latency_ms']:.3f} ms (estimated)"
    )
    top = Table(title=f"top {len(report.top_layers())} layers by estimated latency")
    for column in ("name", "op", "MACs", "est. ms", "share"):
        top.add_column(column)
    for layer in report.top_layers():
        share = layer.latency_ms / totals["latency_ms"] if totals["latency_ms"] else 0.0
        top.add_row(
            escape(layer.name),
            layer.op,
            f"{layer.macs:,}",
            f"{layer.latency_ms:.4f}",
            f"{share:.1%}",
        )
    out.print(top)
    for backend, ops in report.unsupported().items():
        click.echo(f"{backend} lacks: {', '.join(ops)} (source: {report.sources[backend]})")
