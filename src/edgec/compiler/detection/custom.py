"""``--student NAME=FILE.onnx[:trained]`` for a detector: a detection student of your own.

The file is loaded like a classifier's (:mod:`edgec.compiler.students.custom`: shapes fixed,
canonicalised, input and outputs renamed to the teacher's) and checked first against the
teacher's *detection head*: two outputs in the teacher's order, boxes ``[1, K, 4]`` and class
scores ``[1, K, C]`` with the teacher's ``K`` and ``C``, and scores of the same kind (logits or
probabilities). Every stage gets the teacher's decoding and NMS appended, so a student must be
read exactly as the teacher is; a student that is not is refused in one sentence (exit 2).

Without ``:trained`` it is distilled exactly as the derived detection students are
(:func:`edgec.compiler.detection.students.distil_and_export`: shifted views, KD on the class
scores, L1 to the teacher's boxes, ``--distill-epochs``, ``--seed``), exported with the
teacher's names and checked against torch; with ``:trained`` it is used as given. It then joins
the derived students, smallest first by MACs, and its manifest entry says where it came from
(``custom``).
"""

from __future__ import annotations

import onnx

from edgec.compiler.detection.contract import DetectionContract, head_layout, resolve_contract
from edgec.compiler.planning.cost_model import total_macs
from edgec.compiler.progress import Reporter
from edgec.compiler.students.custom import CustomStudent, check_interface, load_custom_students
from edgec.compiler.students.derive import Student
from edgec.config import CompileConfig
from edgec.data import Dataset
from edgec.errors import BadInputError


def _described(model: onnx.ModelProto) -> str:
    dims = [
        [d.dim_value if d.HasField("dim_value") else d.dim_param or "?" for d in
         o.type.tensor_type.shape.dim]
        for o in model.graph.output
    ]  # fmt: skip
    return ", ".join(f"'{o.name}' {d}" for o, d in zip(model.graph.output, dims, strict=True))


def check_head(
    student: onnx.ModelProto, teacher: onnx.ModelProto, contract: DetectionContract, name: str
) -> None:
    """Refuse a student whose outputs are not laid out as the teacher's detection head.

    Raises:
        BadInputError: One sentence: what the student outputs, what the teacher's head is.
    """
    order = [o.name for o in teacher.graph.output]
    found = head_layout(student)
    same = found is not None
    if same:
        s_boxes, _s_scores, k, c = found
        s_order = [o.name for o in student.graph.output]
        kind = resolve_contract(student, contract.postprocess, None).score_kind
        same = (
            (k, c) == (contract.candidates, contract.classes)
            and s_order.index(s_boxes) == order.index(contract.boxes)
            and kind == contract.score_kind
        )
    if not same:
        head = {
            contract.boxes: f"boxes [1, {contract.candidates}, 4]",
            contract.scores: f"class {contract.score_kind} [1, {contract.candidates}, "
            f"{contract.classes}]",
        }
        raise BadInputError(
            f"--student {name}: its outputs ({_described(student)}) do not match the teacher's "
            f"detection head, {' then '.join(head[n] for n in order)}; export the student with "
            "the same outputs in the same order (docs/detection.md)."
        )


def load_detection_students(
    teacher: onnx.ModelProto,
    contract: DetectionContract,
    config: CompileConfig,
    reporter: Reporter,
) -> list[CustomStudent]:
    """Load the ``--student`` files and check them against the teacher's head (before anything
    trains).

    Raises:
        BadInputError: A file that is not a model, or whose head or input is not the teacher's.
    """

    def check(student: onnx.ModelProto, model: onnx.ModelProto, name: str) -> None:
        check_head(student, model, contract, name)
        check_interface(student, model, name)

    return load_custom_students(teacher, config, reporter, check)


def add_detection_students(
    students: tuple[Student, ...],
    record: dict,
    custom: list[CustomStudent],
    teacher: onnx.ModelProto,
    data: Dataset | None,
    contract: DetectionContract,
    config: CompileConfig,
    reporter: Reporter,
) -> tuple[tuple[Student, ...], dict]:
    """``students`` with the ``--student`` models added (distilled unless ``:trained``), all
    ordered smallest first by MACs, and the students record with their ``custom`` entries.

    Raises:
        BadInputError: A student that cannot be distilled (suggests ``:trained``).
    """
    if not custom:
        return students, record
    teacher_macs = total_macs(teacher)
    teacher_module = None
    made, records = list(students), []
    for item in custom:
        file, model = item.file, item.model
        entry = {"name": file.name, "file": file.path.name, "sha256": item.sha256}
        details: dict = {}
        if file.trained:
            entry["trained"] = "as given"
        else:
            if teacher_module is None:
                teacher_module = _torch_module(teacher, data, "the teacher", file.name)
            module = _torch_module(model, data, f"student '{file.name}'", file.name)
            model, details["distillation"] = _distil(
                file.name, module, teacher_module, teacher, data, contract, config, reporter
            )
            entry["trained"] = "distilled"
        macs = total_macs(model)
        details = {
            "custom": entry,
            "mac_ratio": {
                "target": None,
                "achieved": round(macs / teacher_macs, 4) if teacher_macs else None,
            },
            **details,
        }
        made.append(Student(file.name, model, details))
        records.append(entry)
    made.sort(key=lambda s: total_macs(s.model))
    return tuple(made), {**record, "custom": records}


def _torch_module(model: onnx.ModelProto, data: Dataset, what: str, name: str):
    """``model`` converted to torch and checked against ONNX Runtime on a few frames."""
    try:
        import torch  # noqa: F401
        import torch_pruning  # noqa: F401
    except ImportError:
        raise BadInputError(
            f"--student {name}: distilling it needs the train extra (torch and torch-pruning): "
            f"pip install -c constraints.txt -e '.[train]', or give it as "
            f"{name}=FILE.onnx:trained to use it as it is."
        ) from None
    from edgec.compiler.students.convert import (
        UnsupportedModelError,
        check_against_onnxruntime,
        onnx_to_torch,
    )

    try:
        module = onnx_to_torch(model)
        check_against_onnxruntime(module, model, data.x_val[:4])
    except UnsupportedModelError as err:
        raise BadInputError(
            f"--student {name}: {what} cannot be trained in torch ({err}); give the student as "
            f"{name}=FILE.onnx:trained to use it as it is."
        ) from None
    return module


def _distil(name, module, teacher_module, teacher, data, contract, config, reporter):
    """The distilled, exported student and its record (see the module docstring)."""
    from edgec.compiler.detection.students import distil_and_export, distillation_loss
    from edgec.compiler.students.distill import deterministic

    loss = distillation_loss(contract, data)
    with (
        reporter.step(f"Distilling '{name}' (at most {config.distill_epochs} epochs)"),
        deterministic(config.seed),
    ):
        made = distil_and_export(module, teacher_module, teacher, data, contract, loss, config)
    if isinstance(made, str):
        raise BadInputError(
            f"--student {name}: {made}; give it as {name}=FILE.onnx:trained to use it as it is."
        )
    model, report = made
    reporter.note(
        f"'{name}': best holdout loss {report['holdout_loss']:.4f} at epoch "
        f"{report['best_epoch']} of {report['epochs_run']}"
    )
    return model, report
