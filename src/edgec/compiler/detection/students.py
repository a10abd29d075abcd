"""Students for detectors: the classifiers' pruning, with a detection distillation loss.

The teacher (canonical, before NMS) is converted to torch and pruned to each rung's MAC ratio
exactly as a classifier's is (:mod:`edgec.compiler.students.convert`,
:mod:`~edgec.compiler.students.prune`, wrapped so torch-pruning sees one output), then trained
to match the teacher's boxes and class scores on shifted views of the training split
(:mod:`edgec.compiler.detection.training`, with the loss of
:mod:`edgec.compiler.detection.distill_loss`: KD on the class scores, L1 to the teacher's
boxes on matched anchors), and exported with the teacher's input and both output names.
:func:`distil_and_export` is shared with the students users bring
(:mod:`edgec.compiler.detection.custom`).

``--students auto`` makes one student for a detector, the ladder's smallest rung: the device
either answers a frame (empty, or sure of its detections) or hands it to the teacher. Explicit
ratios make one student each.
"""

from __future__ import annotations

import copy
import io
import time
import warnings

import numpy as np
import onnx
import onnxruntime as ort

from edgec.compiler.canonicalize import canonicalize
from edgec.compiler.detection.contract import DetectionContract
from edgec.compiler.planning.cost_model import total_macs
from edgec.compiler.progress import Reporter
from edgec.compiler.students.derive import MIN_TRAIN_SAMPLES, TORCH_MISSING, Student
from edgec.compiler.students.ladder import plan_ladder
from edgec.config import CompileConfig
from edgec.data import Dataset
from edgec.errors import BadInputError
from edgec.runtime.loaders import session_options
from edgec.targets.descriptor import Target

EXPORT_TOLERANCE = 1e-3


def teacher_outputs(
    teacher: onnx.ModelProto, x: np.ndarray, names: tuple[str, str]
) -> tuple[np.ndarray, np.ndarray]:
    """The outputs ``names`` (boxes, scores: pre-NMS) on ``x``, one sample at a time."""
    session = ort.InferenceSession(
        teacher.SerializeToString(), session_options("all", 2), providers=["CPUExecutionProvider"]
    )
    name = session.get_inputs()[0].name
    outs = [
        session.run(list(names), {name: np.ascontiguousarray(x[i : i + 1])}) for i in range(len(x))
    ]
    return tuple(np.concatenate([o[k] for o in outs]) for k in (0, 1))


def derive_detection_students(
    teacher: onnx.ModelProto,
    data: Dataset | None,
    contract: DetectionContract,
    target: Target,
    backend: str,
    config: CompileConfig,
    reporter: Reporter,
) -> tuple[tuple[Student, ...], dict]:
    """The students and the manifest's ``students`` record (with why none, if none)."""
    requested = config.students if isinstance(config.students, str) else list(config.students)
    record: dict = {"requested": requested, "skipped": None, "task": "detection"}

    def skip(reason: str) -> tuple[tuple[Student, ...], dict]:
        record["skipped"] = reason
        if reason != "--students none":
            reporter.note(f"no students: {reason}")
        return (), record

    if config.students == "none":
        return skip("--students none")
    if data is None:
        return skip("no --data: students are trained on data (pass --data digits-detect)")
    if len(data.x_train) < MIN_TRAIN_SAMPLES:
        raise BadInputError(
            f"Data '{data.name}' has {len(data.x_train)} training samples; students need at "
            f"least {MIN_TRAIN_SAMPLES} (pass more data, or --students none)."
        )
    try:
        import torch  # noqa: F401
        import torch_pruning  # noqa: F401
    except ImportError:
        return skip(TORCH_MISSING)
    ladder = plan_ladder(config.students, teacher, target, backend, "fp32", config.budget_ms)
    rungs = ladder.rungs[:1] if config.students == "auto" else ladder.rungs
    record["ladder"] = ladder.to_json()
    return _derive(teacher, data, contract, rungs, config, reporter, record)


def _derive(teacher, data, contract, rungs, config, reporter, record):
    import torch

    from edgec.compiler.students.convert import (
        UnsupportedModelError,
        check_against_onnxruntime,
        onnx_to_torch,
    )
    from edgec.compiler.students.distill import deterministic

    with reporter.step("Converting the detector to torch for training"):
        try:
            module = onnx_to_torch(teacher)
            check_against_onnxruntime(module, teacher, data.x_val[:4])
        except UnsupportedModelError as err:
            record["skipped"] = f"the teacher cannot be trained in torch: {err}"
            reporter.note(f"no students: {record['skipped']}")
            return (), record
    loss = distillation_loss(contract, data)
    record.update(
        settings={
            "epochs": config.distill_epochs,
            "patience": detection_patience(config),
            "loss": loss.to_json(),
        },
        failed=[],
    )
    shape = tuple(d.dim_value for d in teacher.graph.input[0].type.tensor_type.shape.dim)
    example = torch.zeros(shape)
    teacher_macs = total_macs(teacher)
    students = []
    for rung in rungs:
        # One thread, as the classifiers' students: two threads took 4-5x the CPU time
        # (and wall time) of one on a loaded machine, small batches spending it in spin-waits.
        with deterministic(config.seed):
            made = _one(rung, module, example, data, contract, loss, config, teacher, reporter)
        if isinstance(made, str):
            record["failed"].append({"name": rung.name, "reason": made})
            reporter.note(f"student '{rung.name}' skipped: {made}")
            continue
        model, details = made
        macs = total_macs(model)
        details["mac_ratio"] = {
            "target": rung.mac_ratio,
            "achieved": round(macs / teacher_macs, 4) if teacher_macs else None,
        }
        students.append(Student(rung.name, model, details))
    return tuple(students), record


def distillation_loss(contract: DetectionContract, data: Dataset):
    """The loss settings for ``contract``'s outputs on ``data``'s frames (the box term is
    scaled by the candidates' mean spacing, the anchor stride of a grid head)."""
    from edgec.compiler.detection.distill_loss import DetectionLoss

    side = float(np.sqrt(np.prod(data.x_train.shape[2:]) / contract.candidates))
    return DetectionLoss(
        score_kind=contract.score_kind,
        temperature=1.0,  # per-class probabilities are soft targets already
        match_score=contract.postprocess.score,
        box_scale=max(side, 1.0),
    )


class _Packed:
    """Builds a one-output view of a two-output module for torch-pruning (made lazily: torch
    is optional)."""

    @staticmethod
    def wrap(module):
        import torch
        from torch import nn

        class Packed(nn.Module):
            def __init__(self, inner) -> None:
                super().__init__()
                self.inner = inner

            def forward(self, x):
                boxes, scores = self.inner(x)
                return torch.cat([boxes.flatten(1), scores.flatten(1)], dim=1)

            def head_layers(self):
                return self.inner.head_layers()

            def unwrapped_parameters(self):
                return self.inner.unwrapped_parameters()

        return Packed(module)


def _one(rung, module, example, data, contract, loss, config, teacher, reporter):
    """One student (ONNX model and manifest details), or the reason it could not be made."""
    from edgec.compiler.students.prune import PruningError, prune_to_mac_ratio

    with reporter.step(f"Pruning '{rung.name}' to {100 * rung.mac_ratio:g}% of the MACs"):
        try:
            pruned = prune_to_mac_ratio(
                _Packed.wrap(copy.deepcopy(module)), example, rung.mac_ratio
            )
        except PruningError as err:
            return str(err)
    with reporter.step(f"Distilling '{rung.name}' (at most {config.distill_epochs} epochs)"):
        made = distil_and_export(pruned.module.inner, module, teacher, data, contract, loss, config)
    if isinstance(made, str):
        return made
    model, report = made
    reporter.note(
        f"'{rung.name}': best holdout loss {report['holdout_loss']:.4f} at epoch "
        f"{report['best_epoch']} of {report['epochs_run']}"
    )
    details = {
        "pruning": {
            "channel_ratio": round(pruned.pruning_ratio, 4),
            "params": pruned.params_after,
            "teacher_params": pruned.params_before,
        },
        "distillation": report,
    }
    return model, details


def distil_and_export(student, teacher_module, teacher, data, contract, loss, config):
    """Train the torch ``student`` to match ``teacher_module`` on ``data`` and export it with
    ``teacher``'s input and output names: the ONNX model and the distillation record, or why
    the export failed (it differs from torch)."""
    from edgec.compiler.detection.training import train_detector
    from edgec.compiler.students.distill import batchnorm_for_training

    graph = teacher.graph
    names = tuple(o.name for o in graph.output)  # the order the modules return them in
    started = time.perf_counter()
    with batchnorm_for_training(student) as trained:
        report = train_detector(
            trained, teacher_module, data.x_train, loss, config.distill_epochs, config.seed,
            boxes_index=names.index(contract.boxes), patience=detection_patience(config),
        )  # fmt: skip
    report["seconds"] = round(time.perf_counter() - started, 1)
    shape = tuple(d.dim_value for d in graph.input[0].type.tensor_type.shape.dim)
    opset = next((o.version for o in teacher.opset_import if o.domain in ("", "ai.onnx")), 17)
    proto = _export(student, graph.input[0].name, shape, names, opset)
    error = _verify(proto, student, data.x_val[:8], names)
    if error > EXPORT_TOLERANCE:
        return f"the exported student differs from torch by {error:.2e} (relative)"
    model = canonicalize(onnx.shape_inference.infer_shapes(proto, strict_mode=True))
    return model, {**report, "export_error": float(f"{error:.3g}")}


def detection_patience(config: CompileConfig) -> int:
    """``--distill-patience``, or the detection students' own default."""
    if config.distill_patience is not None:
        return config.distill_patience
    from edgec.compiler.detection.training import PATIENCE

    return PATIENCE


def _export(module, input_name, input_shape, output_names, opset) -> onnx.ModelProto:
    """The student in ONNX with the teacher's input and output names (TorchScript exporter)."""
    import torch

    from edgec.compiler.students.export import MAX_OPSET, MIN_OPSET

    module.eval()
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module, (torch.zeros(input_shape),), buffer, input_names=[input_name],
            output_names=list(output_names), opset_version=min(max(opset, MIN_OPSET), MAX_OPSET),
            do_constant_folding=True, dynamo=False,
        )  # fmt: skip
    return onnx.load_from_string(buffer.getvalue())


def _verify(model: onnx.ModelProto, module, x: np.ndarray, names: tuple[str, str]) -> float:
    """Largest difference between ONNX Runtime and torch, relative to the largest output."""
    import torch

    got = teacher_outputs(model, x, names)
    module.eval()
    with torch.no_grad():
        expected = [t.numpy() for t in module(torch.from_numpy(np.ascontiguousarray(x)))]
    return max(
        float(np.abs(g - e).max()) / max(float(np.abs(e).max()), 1e-6)
        for g, e in zip(got, expected, strict=True)
    )
