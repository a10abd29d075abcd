"""Students you bring: ``--student NAME=FILE.onnx[:trained]``, an architecture of your own.

A student the user brings (say a MobileNetV3-tiny where the teacher is a ResNet) is loaded and
canonicalised like the teacher, then checked against the teacher's interface: the same number
of inputs and outputs, each with the teacher's shape and element type (a dynamic batch
dimension is fixed to the teacher's). A mismatch is bad input (exit 2), named: which input or
output, expected against got.

Without ``:trained`` it is distilled from the teacher exactly as the derived students are — the
ONNX graph converted to torch (:mod:`~edgec.compiler.students.convert`), trained by
:func:`~edgec.compiler.students.distill.train_student` on the views the teacher answers too
(function matching, through one teacher cache) with the same settings (``--distill-epochs``,
``--temperature``, ``--alpha``, ``--seed``), exported at the teacher's input shape with the
teacher's input and output names, checked against torch. With
``:trained`` it is used as given (only its input and output are renamed to the teacher's).

Either way it becomes a :class:`~edgec.compiler.students.derive.Student` and joins the derived
ones: the stages are ordered smallest first by MACs (the cascade's order), and from there the
precision step, the cascade planner and the manifest treat it like any student. Its manifest
entry says where it came from (``custom``: file name, SHA-256, trained or distilled).

Failure policy: a student the converter cannot represent, or whose export does not match torch,
is bad input (the user asked for it by name): the message says why and suggests ``:trained``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, replace

import onnx

from edgec.compiler.canonicalize import canonicalize
from edgec.compiler.loading import load_model
from edgec.compiler.planning.cost_model import total_macs
from edgec.compiler.progress import Reporter
from edgec.compiler.students.derive import Student, StudentsResult, distill_settings
from edgec.compiler.students.ladder import stage_names
from edgec.config import CompileConfig, StudentFile
from edgec.data import Dataset
from edgec.errors import BadInputError

CHECK_SAMPLES = 8
_DTYPES = {v: k for k, v in onnx.TensorProto.DataType.items()}


def derived_names(config: CompileConfig) -> list[str]:
    """The stage names the derived students may take (``--students``)."""
    if config.students == "none":
        return []
    return stage_names(2 if config.students == "auto" else len(config.students))


def _io(model: onnx.ModelProto) -> tuple[list[onnx.ValueInfoProto], list[onnx.ValueInfoProto]]:
    initializers = {init.name for init in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    return inputs, list(model.graph.output)


def _describe(value: onnx.ValueInfoProto) -> str:
    tensor = value.type.tensor_type
    dims = [
        str(d.dim_value) if d.HasField("dim_value") else (d.dim_param or "?")
        for d in tensor.shape.dim
    ]
    dtype = _DTYPES.get(tensor.elem_type, str(tensor.elem_type)).lower()
    return f"[{', '.join(dims)}] {dtype}"


def check_interface(student: onnx.ModelProto, teacher: onnx.ModelProto, name: str) -> None:
    """Refuse a student whose inputs and outputs are not the teacher's.

    Raises:
        BadInputError: Which input or output differs, expected (teacher) against got.
    """
    s_in, s_out = _io(student)
    t_in, t_out = _io(teacher)
    for kind, ours, theirs in (("inputs", s_in, t_in), ("outputs", s_out, t_out)):
        if len(ours) != len(theirs):
            raise BadInputError(
                f"--student {name}: it has {len(ours)} {kind}, the teacher {len(theirs)}; a "
                f"student takes the teacher's input and gives its output."
            )
        for index, (got, want) in enumerate(zip(ours, theirs, strict=True)):
            if _describe(got) != _describe(want):
                raise BadInputError(
                    f"--student {name}: {kind[:-1]} {index} ('{got.name}') is "
                    f"{_describe(got)}, the teacher's ('{want.name}') is {_describe(want)}; "
                    "export the student with the teacher's input and output shapes and types."
                )


def _load(file: StudentFile, teacher: onnx.ModelProto) -> tuple[onnx.ModelProto, str]:
    """The student, shapes fixed (a dynamic input dimension takes the teacher's), and its
    file's SHA-256."""
    try:
        raw = onnx.load(file.path, load_external_data=False)
    except Exception as err:  # onnx raises several types for a file that is not a model
        raise BadInputError(
            f"--student {file.name}: {file.path} is not an ONNX model ({type(err).__name__})."
        ) from None
    s_in, _ = _io(raw)
    t_in, _ = _io(teacher)
    shapes = {}
    for index, got in enumerate(s_in):
        dims = got.type.tensor_type.shape.dim
        if all(d.HasField("dim_value") for d in dims):
            continue
        # A dynamic dimension takes the teacher's (1 where the ranks differ: the interface
        # check then names the difference).
        want = t_in[index].type.tensor_type.shape.dim if index < len(t_in) else []
        fixed = [d.dim_value for d in want] if len(want) == len(dims) else [1] * len(dims)
        shapes[got.name] = tuple(
            d.dim_value if d.HasField("dim_value") else fixed[i] for i, d in enumerate(dims)
        )
    try:
        loaded = load_model(file.path, shapes)
    except BadInputError as err:
        raise BadInputError(f"--student {file.name}: {err}") from None
    return loaded.proto, hashlib.sha256(file.path.read_bytes()).hexdigest()


def _rename_io(model: onnx.ModelProto, teacher: onnx.ModelProto) -> onnx.ModelProto:
    """The student with the teacher's input and output names (every stage has one interface)."""
    (s_in, s_out), (t_in, t_out) = _io(model), _io(teacher)
    names = {
        got.name: want.name
        for got, want in zip([*s_in, *s_out], [*t_in, *t_out], strict=True)
        if got.name != want.name
    }
    if not names:
        return model
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    graph = copy.graph
    for value in [*graph.input, *graph.output, *graph.value_info]:
        value.name = names.get(value.name, value.name)
    for node in graph.node:
        node.input[:] = [names.get(n, n) for n in node.input]
        node.output[:] = [names.get(n, n) for n in node.output]
    return copy


def _distil(
    file: StudentFile,
    model: onnx.ModelProto,
    teacher: onnx.ModelProto,
    data: Dataset,
    cache,
    config: CompileConfig,
    reporter: Reporter,
) -> tuple[onnx.ModelProto, dict]:
    """Distil the student from the teacher like the derived students (function matching: the
    teacher, through ``cache``, answers the same views the student sees); its exported model
    and record."""
    import torch

    from edgec.compiler.students.convert import (
        UnsupportedModelError,
        check_against_onnxruntime,
        onnx_to_torch,
    )
    from edgec.compiler.students.derive import _progress_bar
    from edgec.compiler.students.distill import (
        Holdout,
        batchnorm_for_training,
        deterministic,
        train_student,
    )
    from edgec.compiler.students.export import ExportMismatchError, export_student, verify_export

    settings = distill_settings(config)
    with reporter.step(f"Converting student '{file.name}' to torch for training"):
        try:
            module = onnx_to_torch(model)
            check_against_onnxruntime(module, model, data.x_val[:CHECK_SAMPLES])
        except UnsupportedModelError as err:
            raise BadInputError(
                f"--student {file.name} cannot be trained in torch: {err}; give it as "
                f"{file.name}=FILE.onnx:trained to use it as it is."
            ) from None
    labels = data.y_train if data.has_labels else None
    with deterministic(config.seed, settings.threads):
        torch.manual_seed(config.seed)
        bar = _progress_bar(reporter, file.name, settings.epochs)
        with bar as progress, batchnorm_for_training(module) as student:
            report = train_student(
                student,
                data.x_train,
                cache,
                labels,
                settings=settings,
                progress=progress,
                holdout=Holdout(data.x_val, cache(data.x_val)),
            )
    reporter.note(
        f"'{file.name}': {report.epochs_text()} ({report.loss}), best holdout "
        f"{report.metric} {100 * report.holdout:.2f}% at epoch {report.best_epoch}, "
        f"{report.seconds:.1f} s"
    )
    if (hint := report.cap_hint(file.name)) is not None:
        reporter.note(hint)
    graph = teacher.graph
    shape = tuple(d.dim_value for d in graph.input[0].type.tensor_type.shape.dim)
    opset = next((o.version for o in teacher.opset_import if o.domain in ("", "ai.onnx")), 17)
    with reporter.step(f"Exporting '{file.name}' to ONNX"):
        proto = export_student(module, graph.input[0].name, shape, graph.output[0].name, opset)
        try:
            error = verify_export(proto, module, data.x_val[:CHECK_SAMPLES])
        except ExportMismatchError as err:
            raise BadInputError(
                f"--student {file.name}: {err}; give it as {file.name}=FILE.onnx:trained to "
                "use it as it is."
            ) from None
        exported = canonicalize(onnx.shape_inference.infer_shapes(proto, strict_mode=True))
    return exported, {**report.to_json(), "export_error": float(f"{error:.3g}")}


@dataclass(frozen=True)
class CustomStudent:
    """A ``--student`` file, loaded and checked against the teacher.

    Attributes:
        file: What was asked for.
        model: Its canonical model, with the teacher's input and output names.
        sha256: The file's SHA-256.
    """

    file: StudentFile
    model: onnx.ModelProto
    sha256: str


def load_custom_students(
    teacher: onnx.ModelProto,
    config: CompileConfig,
    reporter: Reporter,
    check: Callable[[onnx.ModelProto, onnx.ModelProto, str], None] = check_interface,
) -> list[CustomStudent]:
    """Load and check the ``--student`` files (before anything trains); ``check(student,
    teacher, name)`` refuses a student that does not fit (detectors check their head first).

    Raises:
        BadInputError: A file that is not a model, whose interface differs from the teacher's,
            or whose name the derived students use.
    """
    taken = set(derived_names(config))
    loaded = []
    for file in config.student_files:
        if file.name in taken:
            raise BadInputError(
                f"--student {file.name}: the derived students use that stage name; pick "
                "another (or pass --students none)."
            )
        with reporter.step(f"Loading student '{file.name}' ({file.path.name})"):
            proto, sha256 = _load(file, teacher)
            check(proto, teacher, file.name)
            model = _rename_io(canonicalize(proto), teacher)
        loaded.append(CustomStudent(file, model, sha256))
    return loaded


def add_custom_students(
    derived: StudentsResult,
    custom: list[CustomStudent],
    teacher: onnx.ModelProto,
    data: Dataset | None,
    config: CompileConfig,
    reporter: Reporter,
) -> StudentsResult:
    """``derived`` with the ``--student`` models added (distilled unless ``:trained``), all
    ordered smallest first by MACs.

    Raises:
        BadInputError: A student that cannot be distilled.
    """
    if not custom:
        return derived
    teacher_macs = total_macs(teacher)
    cache = None
    students, records = list(derived.students), []
    for item in custom:
        file, model = item.file, item.model
        record = {"name": file.name, "file": file.path.name, "sha256": item.sha256}
        if file.trained:
            record["trained"] = "as given"
        else:
            if cache is None:
                from edgec.compiler.students.teacher_cache import TeacherCache

                cache = TeacherCache(teacher)
            model, record["distillation"] = _distil(
                file, model, teacher, data, cache, config, reporter
            )
            record["trained"] = "distilled"
        macs = total_macs(model)
        details = {
            "custom": {k: v for k, v in record.items() if k != "distillation"},
            "mac_ratio": {
                "target": None,
                "achieved": round(macs / teacher_macs, 4) if teacher_macs else None,
            },
        }
        if "distillation" in record:
            details["distillation"] = record["distillation"]
        students.append(Student(file.name, model, details))
        records.append(details["custom"])
    students.sort(key=lambda s: total_macs(s.model))
    return replace(derived, students=tuple(students), record={**derived.record, "custom": records})
