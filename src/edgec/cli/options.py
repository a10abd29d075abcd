"""Click options shared by several commands, each defined once.

Single options (``--json``, ``--target``, ``--input-shape``, ``--percentile``, ``--budget-ms``,
the key options) are decorator factories; the compile command's families of flags (INT8,
backend, students, cascade, partition, graph passes) are groups applied with one decorator.
The parameter names are :class:`~edgec.config.CompileConfig`'s field names, so a command
passes them on without renaming. Choices are spelled here (not imported from
:mod:`edgec.config`) so that ``edgec --help`` and ``edgec install`` start without NumPy.
"""

from __future__ import annotations

from pathlib import Path

import click

PERCENTILE_CHOICES = ("50", "90", "99")
OBJECTIVE_CHOICES = ("latency", "energy")
SHAPE_HELP = "Fix a dynamic input's shape, e.g. input=1x3x224x224 (repeatable)."


def compose(*decorators):
    """One decorator applying ``decorators`` in the order listed (top first, as written)."""

    def apply(func):
        for decorator in reversed(decorators):
            func = decorator(func)
        return func

    return apply


def json_option(help: str = "Print machine-readable JSON."):  # noqa: A002 - click's name
    """``--json`` into the parameter ``as_json``."""
    return click.option("--json", "as_json", is_flag=True, help=help)


def trace_option():
    """``--trace``: one definition for ``run`` and ``serve``, the two ends of a trace."""
    return click.option(
        "--trace",
        type=click.Choice(["off", "console", "otlp"]),
        default="off",
        show_default=True,
        help="OpenTelemetry spans, one trace per frame across device and gateway (W3C "
        "traceparent over HTTP): console (stderr) or otlp (OTEL_EXPORTER_OTLP_ENDPOINT); needs "
        "edgec[trace].",
    )


def target_option(required: bool = True):
    """``-t/--target``: required for compile, ``host`` by default elsewhere."""
    if required:
        return click.option(
            "-t", "--target", required=True, help="Target name (see `edgec targets`) or YAML."
        )
    return click.option(
        "-t", "--target", default="host", show_default=True, help="Target name or YAML."
    )


def input_shape_option():
    """``--input-shape NAME=DIMS`` (repeatable) into ``input_shapes``."""
    return click.option(
        "--input-shape", "input_shapes", multiple=True, metavar="NAME=DIMS", help=SHAPE_HELP
    )


def percentile_option():
    """``--percentile`` 50, 90 or 99 (a string; commands convert it)."""
    return click.option(
        "--percentile",
        type=click.Choice(PERCENTILE_CHOICES),
        default="99",
        show_default=True,
        help="Latency percentile the budget applies to.",
    )


def budget_option(help: str):  # noqa: A002 - click's name
    """``--budget-ms`` (optional) into ``budget_ms``."""
    return click.option("--budget-ms", type=float, help=help)


def public_key_option(help: str):  # noqa: A002 - click's name
    """``--key`` naming a public key (``edgec.pub``), optional."""
    return click.option("--key", type=click.Path(path_type=Path), help=help)


def private_key_option():
    """``--key`` naming a private key (``edgec.key``), required."""
    return click.option(
        "--key", type=click.Path(path_type=Path), required=True, help="Private key (edgec.key)."
    )


def bundle_argument():
    """The ``BUNDLE`` directory argument."""
    return click.argument("bundle", type=click.Path(path_type=Path))


def model_argument():
    """The ``MODEL`` (ONNX file) argument."""
    return click.argument("model", type=click.Path(path_type=Path))


def objective_option(help: str):  # noqa: A002 - click's name
    """``--objective`` latency or energy."""
    return click.option(
        "--objective",
        type=click.Choice(OBJECTIVE_CHOICES),
        default="latency",
        show_default=True,
        help=help,
    )


int8_options = compose(
    click.option(
        "--precision",
        type=click.Choice(["fp32", "fp16", "int8", "auto"]),
        default="auto",
        show_default=True,
        help="Precision of the stages: auto picks, per stage, FP16 where the target's GPU runs "
        "it (FP32 I/O), else the faster of FP32 and INT8 (needs --data), whichever passes the "
        "accuracy guard; fp16 (GPU targets only) and int8 force one.",
    ),
    click.option(
        "--calibration",
        type=click.Choice(["minmax", "entropy", "percentile"]),
        default="minmax",
        show_default=True,
        help="INT8 calibration method (ONNX Runtime's calibrators).",
    ),
    click.option(
        "--calib-samples",
        type=int,
        default=300,
        show_default=True,
        help="Most calibration inputs, drawn from the training split of --data.",
    ),
    click.option(
        "--max-accuracy-drop",
        type=float,
        default=1.0,
        show_default=True,
        help="Largest accuracy drop INT8 or FP16 may cause, in points (without labels: "
        "disagreement with FP32 where FP32 is confident); worse layers are kept in FP32.",
    ),
    click.option(
        "--min-sqnr-db",
        type=float,
        default=10.0,
        show_default=True,
        help="Without labels, the SQNR of INT8 logits against FP32 that INT8 must reach.",
    ),
    click.option(
        "--qat",
        type=click.Choice(["auto", "on", "off"]),
        default="auto",
        show_default=True,
        help="Quantization-aware training: where post-training INT8 misses the accuracy guard, "
        "fine-tune the stage with fake quantization (teacher's logits as the loss) and judge "
        "it again. auto: when torch is installed; on: also where post-training INT8 passes "
        "(needs torch); off: never.",
    ),
)

backend_options = compose(
    click.option(
        "--backend",
        default="auto",
        show_default=True,
        help="auto, onnxruntime, tvm (or another registered backend). auto: on this machine, "
        "build with each usable backend and keep the fastest (TVM only when tuned); with "
        "--device, TVM measured on the device; elsewhere the target's preference.",
    ),
    click.option(
        "--tune-trials",
        type=int,
        default=0,
        show_default=True,
        help="MetaSchedule autotuning trials per stage for the tvm backend (0: untuned).",
    ),
    click.option(
        "--tuning-cache",
        type=click.Path(path_type=Path),
        help="Directory of TVM tuning records: reused by later compiles of the same model.",
    ),
    click.option(
        "--device",
        metavar="URL",
        help="Measure (and tune) on the real device through TVM RPC: rpc://HOST:PORT or "
        "tracker://HOST:PORT/KEY.",
    ),
    click.option(
        "--measure-seconds",
        type=float,
        default=10.0,
        show_default=True,
        help="Longest time spent timing one stage on this machine.",
    ),
)

data_and_student_options = compose(
    click.option("--data", help="Data for accuracy: 'digits' or an .npz with x (and y)."),
    click.option(
        "--seed", type=int, default=0, show_default=True, help="Seed for everything random."
    ),
    click.option(
        "--students",
        default="auto",
        show_default=True,
        help="Students to derive (needs --data and the train extra): auto (sized from the "
        "target; skipped without --data), none, or MAC ratios of the teacher such as 0.1,0.3.",
    ),
    click.option(
        "--student",
        "student_files",
        multiple=True,
        metavar="NAME=FILE.onnx[:trained]",
        help="A student of your own architecture (repeatable), with the teacher's input and "
        "output: distilled from the teacher like the derived students (needs --data and the "
        "train extra), or used as given with ':trained'. It joins the cascade as stage NAME.",
    ),
    click.option(
        "--distill-epochs",
        type=int,
        default=150,
        show_default=True,
        help="Most epochs each student trains for: training ends when the validation split "
        "stops improving (then a short cooldown), or at this cap.",
    ),
    click.option(
        "--distill-patience",
        type=int,
        default=None,
        help="Epochs in which a student gets no closer to the teacher on the validation split "
        "before its cooldown starts. Raise it when that split is small (a few hundred inputs): "
        "its noise can end training early; lower it to train faster. [default: 20 for "
        "classifier students, 10 for detection students]",
    ),
    click.option(
        "--temperature",
        type=float,
        default=4.0,
        show_default=True,
        help="Distillation temperature T.",
    ),
    click.option(
        "--alpha",
        type=float,
        default=0.5,
        show_default=True,
        help="Weight of the label loss; the distillation loss gets 1 - alpha (labels optional).",
    ),
    click.option(
        "--unlabeled",
        metavar="DIR|FILE.npz",
        help="Inputs without labels for distillation only (field captures: a capture DIR, "
        "a directory of .npy/.npz, or an .npz with x); --data's labels still judge accuracy.",
    ),
)

cascade_options = compose(
    click.option(
        "--confidence",
        type=click.Choice(["max-prob", "margin", "entropy"]),
        default="max-prob",
        show_default=True,
        help="Confidence measure a cascade stage answers on (vs its threshold).",
    ),
    click.option(
        "--fusion",
        type=click.Choice(["replace", "weighted"]),
        default="replace",
        show_default=True,
        help="Combine a gateway answer with the device's: replace it, or weight both.",
    ),
    click.option(
        "--accuracy-tolerance",
        type=float,
        default=0.5,
        show_default=True,
        help="Points of validation accuracy the cascade may give up for a cheaper policy.",
    ),
    click.option(
        "--partition",
        default="off",
        show_default=True,
        metavar="auto|off|CUT",
        help="Split the teacher between device and gateway: auto picks the cut with the lowest "
        "--objective, or name one (a tensor, gateway-only, device-only; see `edgec inspect "
        "--partition`). The device runs the first layers and sends the intermediate tensor.",
    ),
    objective_option("What --partition auto minimises: end-to-end latency or device energy."),
)

graph_options = compose(
    click.option(
        "--preprocess",
        metavar="SPEC",
        help="Fuse camera-frame pre-processing into the model, e.g. "
        "'uint8,nhwc,bgr,size=480x640,resize=bilinear,mean=127.5,scale=0.0078125'; "
        "the bundle's input becomes the frame (docs/preprocess.md).",
    ),
    click.option(
        "--time-passes", is_flag=True, help="Print each graph pass's time and node-count change."
    ),
    click.option(
        "--dump-ir",
        type=click.Path(path_type=Path),
        metavar="DIR",
        help="Write the model after every graph pass into DIR.",
    ),
)

bundle_output_options = compose(
    click.option(
        "--sign-key",
        type=click.Path(path_type=Path),
        help="Sign the bundle with this private key (from `edgec keygen`).",
    ),
    click.option("--force", is_flag=True, help="Replace an existing bundle."),
    click.option("--archive", is_flag=True, help="Also write BUNDLE.tar.gz."),
)
