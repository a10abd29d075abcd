"""Validated, frozen configuration: CLI flags (or API arguments) become one ``CompileConfig``.

Validation happens once, here, at the edge; past it code receives typed values. Cross-field
errors explain the fix.
"""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from edgec.errors import BadInputError, MissingDependencyError
from edgec.kernels.preprocess.spec import PreprocessSpec

Percentile = Literal[50, 90, 99]
PERCENTILES: tuple[int, ...] = (50, 90, 99)
PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "int8", "auto")
CONFIDENCE_MEASURES: tuple[str, ...] = ("max-prob", "margin", "entropy")
FUSIONS: tuple[str, ...] = ("replace", "weighted")
OBJECTIVES: tuple[str, ...] = ("latency", "energy")
QAT_MODES: tuple[str, ...] = ("auto", "on", "off")

# Dimensions are separated by 'x' only, the one documented spelling: other separators are
# refused with the expected format rather than guessed.
_SHAPE_RE = re.compile(r"^\s*([^=]+?)\s*=\s*(\d+(?:\s*x\s*\d+)*)\s*$")


def _importable(name: str) -> bool:
    """Whether ``import name`` can work, without importing it (torch takes seconds)."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # ValueError: a module blocked in sys.modules
        return False


def parse_input_shape(spec: str) -> tuple[str, tuple[int, ...]]:
    """Parse ``name=1x3x224x224`` into a name and a shape.

    Raises:
        BadInputError: The text is not of that form (commas between dimensions included) or a
            dimension is zero.
    """
    match = _SHAPE_RE.match(spec)
    if not match:
        raise BadInputError(
            f"--input-shape '{spec}' is not of the form NAME=DIMS with dimensions separated "
            "by 'x', e.g. input=1x3x224x224."
        )
    name, dims_text = match.groups()
    dims = tuple(int(d) for d in re.split(r"\s*x\s*", dims_text))
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


def parse_students(spec: str) -> str | tuple[float, ...]:
    """Parse ``--students``: ``auto``, ``none`` or comma-separated MAC ratios (``0.1,0.3``).

    Raises:
        BadInputError: A ratio is not a number in (0, 1) or appears twice.
    """
    text = spec.strip().lower()
    if text in ("auto", "none"):
        return text
    try:
        ratios = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise BadInputError(
            f"--students '{spec}' is not 'auto', 'none' or MAC ratios such as 0.1,0.3."
        ) from None
    _check_student_ratios(ratios)
    return tuple(sorted(ratios))


def _check_student_ratios(ratios: tuple[float, ...]) -> None:
    if not ratios or any(not 0 < r < 1 for r in ratios):
        raise BadInputError(
            f"--students ratios must be shares of the teacher's MACs between 0 and 1 "
            f"(exclusive), got {', '.join(f'{r:g}' for r in ratios) or 'none'}."
        )
    if len(set(ratios)) != len(ratios):
        raise BadInputError("--students gives the same MAC ratio twice.")


_STUDENT_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class StudentFile:
    """One ``--student NAME=FILE.onnx[:trained]``.

    Attributes:
        name: The stage name.
        path: The ONNX file.
        trained: Use it as given (``:trained``) instead of distilling it from the teacher.
    """

    name: str
    path: Path
    trained: bool = False


def parse_student_file(spec: str) -> StudentFile:
    """Parse ``NAME=FILE.onnx`` or ``NAME=FILE.onnx:trained``.

    Raises:
        BadInputError: Not of that form, a bad name, or no such file.
    """
    name, sep, rest = spec.partition("=")
    name, rest = name.strip(), rest.strip()
    if not sep or not name or not rest:
        raise BadInputError(
            f"--student '{spec}' is not of the form NAME=FILE.onnx (or NAME=FILE.onnx:trained)."
        )
    trained = rest.endswith(":trained")
    path = Path(rest[: -len(":trained")] if trained else rest)
    if not _STUDENT_NAME_RE.match(name) or name == "teacher":
        raise BadInputError(
            f"--student name '{name}' must be letters, digits, '.', '_' or '-' (not 'teacher'): "
            "it names the stage's directory."
        )
    if not path.is_file():
        raise BadInputError(f"--student {name}: no such file {path}; give the student's .onnx.")
    return StudentFile(name, path, trained)


def parse_student_files(specs: tuple[str, ...] | list[str]) -> tuple[StudentFile, ...]:
    """Parse repeated ``--student`` flags; a name given twice is an error."""
    files = tuple(parse_student_file(spec) for spec in specs)
    names = [f.name for f in files]
    for name in names:
        if names.count(name) > 1:
            raise BadInputError(f"--student gives the stage name '{name}' twice.")
    return files


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
        precision: ``auto`` (default: per stage, FP16 where the target's GPU runs it, else the
            faster of FP32 and INT8; whatever passes the accuracy guard), ``fp32``, ``fp16``
            (GPU targets only) or ``int8``.
        backend: ``auto`` (the target's preference) or a backend name.
        data: ``--data`` source (``digits`` or an ``.npz`` path) for accuracy.
        force: Replace an existing bundle.
        archive: Also write ``<output>.tar.gz``.
        seed: Seed for everything random (splits, inputs, training).
        students: ``auto`` (a ladder sized from the target), ``none``, or MAC ratios.
        distill_epochs: Most epochs each student trains for (the holdout's stall ends it sooner).
        distill_patience: Epochs without improvement on the validation split before a
            student's cooldown starts (raise it when that split is small and noisy);
            ``None``: the students' own default (classifiers 20, detectors 10).
        temperature: Distillation softmax temperature.
        alpha: Weight of the label loss against the distillation loss (0..1).
        unlabeled: ``--unlabeled`` inputs without labels (a capture directory, a directory of
            ``.npy``/``.npz`` files or an ``.npz`` with ``x``), for distillation only.
        measure_seconds: Longest time to spend timing one stage on this machine.
        calibration: INT8 calibration method: ``minmax``, ``entropy`` or ``percentile``.
        calib_samples: Most calibration inputs, drawn from the training split of ``data``.
        max_accuracy_drop: Largest accuracy drop INT8 may cause, in points (without labels:
            disagreement with FP32 on inputs where FP32 is confident).
        min_sqnr_db: Without labels, the SQNR of INT8 logits against FP32 that INT8 must reach.
        sign_key: Private key (``edgec keygen``) to sign the bundle with, or ``None``.
        preprocess: The camera frame (``--preprocess``): its kernel is fused in front of every
            stage and the bundle's input becomes the frame; ``None`` keeps the tensor input.
        time_passes: Record each graph pass's time and node-count change (``--time-passes``).
        dump_ir: Write the model after every graph pass into this directory (``--dump-ir``).
        confidence: The cascade's confidence measure: ``max-prob``, ``margin`` or ``entropy``.
        fusion: How a gateway answer is combined with the device's: ``replace`` or
            ``weighted``.
        accuracy_tolerance: Points of validation accuracy the cascade planner may give up
            for a cheaper policy (the cheapest within this of the best wins).
        tune_trials: MetaSchedule trial budget per stage for the tvm backend (0: untuned).
        tuning_cache: Directory whose tuning records later compiles reuse (``--tuning-cache``).
        device: ``rpc://HOST:PORT`` or ``tracker://HOST:PORT/KEY``: measure (and tune) device
            stages on the real device through TVM RPC; ``None`` estimates non-host targets.
        partition: ``off`` (the teacher runs whole), ``auto`` (split it where the objective is
            lowest), or a cut: a tensor name, ``gateway-only`` or ``device-only``.
        objective: What ``--partition auto`` minimises: ``latency`` or device ``energy``.
        qat: ``--qat``: ``auto`` (fine-tune with fake quantization where post-training INT8
            misses the accuracy guard, when torch is installed), ``on`` (also where it passes;
            needs torch) or ``off``.
        student_files: ``--student NAME=FILE.onnx[:trained]`` (:func:`parse_student_files`):
            students of the user's own architecture, distilled from the teacher (or used as
            given when trained; :mod:`edgec.compiler.students.custom`).
        task: ``auto`` (inferred from the outputs), ``classification`` or ``detection``
            (docs/detection.md).
        postprocess: A detector's NMS settings and output formats (``--postprocess``);
            ``None``: the defaults.
        anchors: ``[K, 4]`` anchors (``.npy``) a detector's boxes are SSD offsets to.
    """

    model: Path
    target: str
    output: Path
    budget_ms: float | None = None
    percentile: int = 99
    input_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    precision: str = "auto"
    backend: str = "auto"
    data: str | None = None
    force: bool = False
    archive: bool = False
    seed: int = 0
    students: str | tuple[float, ...] = "auto"
    distill_epochs: int = 150
    distill_patience: int | None = None
    temperature: float = 4.0
    alpha: float = 0.5
    unlabeled: str | None = None
    measure_seconds: float = 10.0
    calibration: str = "minmax"
    calib_samples: int = 300
    max_accuracy_drop: float = 1.0
    min_sqnr_db: float = 10.0
    sign_key: Path | None = None
    preprocess: PreprocessSpec | None = None
    time_passes: bool = False
    dump_ir: Path | None = None
    confidence: str = "max-prob"
    fusion: str = "replace"
    accuracy_tolerance: float = 0.5
    tune_trials: int = 0
    tuning_cache: Path | None = None
    device: str | None = None
    partition: str = "off"
    objective: str = "latency"
    qat: str = "auto"
    student_files: tuple[StudentFile, ...] = ()
    task: str = "auto"
    postprocess: Any = None  # edgec.compiler.detection.contract.PostprocessSpec
    anchors: Path | None = None

    def __post_init__(self) -> None:
        self._check_cascade()
        self._check_qat()
        self._check_tvm()
        if self.dump_ir is not None and self.dump_ir.exists() and not self.dump_ir.is_dir():
            raise BadInputError(
                f"--dump-ir {self.dump_ir} is a file; give a directory (it is created if missing)."
            )
        if self.budget_ms is not None and self.budget_ms <= 0:
            raise BadInputError(f"--budget-ms must be positive, got {self.budget_ms}.")
        if self.percentile not in PERCENTILES:
            raise BadInputError(f"--percentile must be 50, 90 or 99, got {self.percentile}.")
        if self.measure_seconds <= 0:
            raise BadInputError(f"--measure-seconds must be positive, got {self.measure_seconds}.")
        from edgec.passes.quantize import CALIBRATION_METHODS  # the passes own the methods

        if self.calibration not in CALIBRATION_METHODS:
            raise BadInputError(
                f"--calibration must be one of {', '.join(CALIBRATION_METHODS)}, "
                f"got '{self.calibration}'."
            )
        if self.calib_samples < 1:
            raise BadInputError(f"--calib-samples must be at least 1, got {self.calib_samples}.")
        if not 0 <= self.max_accuracy_drop <= 100:
            raise BadInputError(
                f"--max-accuracy-drop is in points between 0 and 100, got {self.max_accuracy_drop}."
            )
        if isinstance(self.students, str):
            if self.students not in ("auto", "none"):
                raise BadInputError(
                    f"--students must be auto, none or ratios, not '{self.students}'."
                )
        else:
            _check_student_ratios(tuple(self.students))
        if self.distill_epochs < 1:
            raise BadInputError(f"--distill-epochs must be at least 1, got {self.distill_epochs}.")
        if self.distill_patience is not None and self.distill_patience < 1:
            raise BadInputError(
                f"--distill-patience must be at least 1, got {self.distill_patience}."
            )
        if self.temperature <= 0:
            raise BadInputError(f"--temperature must be positive, got {self.temperature}.")
        if not 0 <= self.alpha <= 1:
            raise BadInputError(f"--alpha must be between 0 and 1, got {self.alpha}.")
        if self.precision not in PRECISIONS:
            raise BadInputError(
                f"--precision must be one of {', '.join(PRECISIONS)}, got '{self.precision}'."
            )
        self._check_explicit_requests()

    def _check_explicit_requests(self) -> None:
        """Explicit requests that cannot be met are refused (``auto`` adapts, with a note)."""
        untrained = [f.name for f in self.student_files if not f.trained]
        if untrained and self.data is None:
            raise BadInputError(
                f"--student {untrained[0]} is distilled from the teacher and needs --data "
                "(pass --data digits or an .npz with x), or give it as NAME=FILE.onnx:trained."
            )
        if untrained and not _importable("torch"):
            raise MissingDependencyError(
                f"--student {untrained[0]} is distilled in torch, and the train extra is not "
                "installed: pip install 'edgec[train]' (or give it as NAME=FILE.onnx:trained)."
            )
        if isinstance(self.students, str):
            return
        ratios = ",".join(f"{r:g}" for r in self.students)
        if self.data is None:
            raise BadInputError(
                f"--students {ratios} needs --data to train the students on (pass --data "
                "digits or an .npz with x), or use --students auto or none."
            )
        if not all(_importable(name) for name in ("torch", "torch_pruning")):
            raise MissingDependencyError(
                f"--students {ratios} needs the train extra (torch and torch-pruning), which is "
                "not installed: pip install 'edgec[train]' (or use --students auto or none)."
            )

    def _check_qat(self) -> None:
        if self.qat not in QAT_MODES:
            raise BadInputError(f"--qat must be one of {', '.join(QAT_MODES)}, got '{self.qat}'.")
        if self.qat != "on":
            return
        if self.precision in ("fp32", "fp16"):
            raise BadInputError(
                f"--qat on fine-tunes INT8 stages, and --precision {self.precision} makes none; "
                "use --precision auto or int8, or --qat off."
            )
        if not _importable("torch"):
            raise MissingDependencyError(
                "--qat on needs the train extra (torch), which is not installed: "
                "pip install 'edgec[train]' (or use --qat auto or off)."
            )

    def _check_tvm(self) -> None:
        if self.tune_trials < 0:
            raise BadInputError(f"--tune-trials must be 0 or more, got {self.tune_trials}.")
        cache = self.tuning_cache
        if cache is not None and cache.exists() and not cache.is_dir():
            raise BadInputError(
                f"--tuning-cache {cache} is a file; give a directory (it is created if missing)."
            )
        if self.device is not None:
            from edgec.targets.device_url import parse_device_url

            parse_device_url(self.device)
        measured_by_tvm = self.tune_trials > 0 or self.device is not None
        if measured_by_tvm and self.backend not in ("auto", "tvm"):
            flag = "--device" if self.device is not None else "--tune-trials"
            raise BadInputError(
                f"{flag} works through the tvm backend (MetaSchedule, TVM RPC), not "
                f"'{self.backend}'; use --backend tvm or auto."
            )

    def _check_cascade(self) -> None:
        if self.confidence not in CONFIDENCE_MEASURES:
            raise BadInputError(
                f"--confidence must be one of {', '.join(CONFIDENCE_MEASURES)}, "
                f"got '{self.confidence}'."
            )
        if self.fusion not in FUSIONS:
            raise BadInputError(
                f"--fusion must be one of {', '.join(FUSIONS)}, got '{self.fusion}'."
            )
        if not self.partition.strip():
            raise BadInputError("--partition needs auto, off or a tensor name.")
        if self.objective not in OBJECTIVES:
            raise BadInputError(
                f"--objective must be {' or '.join(OBJECTIVES)}, got '{self.objective}'."
            )
        if not 0 <= self.accuracy_tolerance <= 100:
            raise BadInputError(
                "--accuracy-tolerance is in points between 0 and 100, "
                f"got {self.accuracy_tolerance}."
            )
