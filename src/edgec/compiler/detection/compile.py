"""The compile of a detector: students, NMS in every stage, the detection cascade, the bundle.

:func:`compile_detection` is what :func:`edgec.compiler.driver.compile_model` hands a model to
when ``--task`` is (or is inferred to be) ``detection``. It follows the classifier's compile
step for step, with these differences:

* the students are trained by :mod:`edgec.compiler.detection.students`, and ``--student``
  files are checked against the detection head and distilled by
  :mod:`edgec.compiler.detection.custom`;
* every stage gets the decoding and NMS appended (:mod:`~edgec.compiler.detection.postprocess`),
  so each outputs one packed row of decoded detections, and the manifest's ``outputs`` say so;
* stages are evaluated by mAP@0.5 on ``--data`` (the stage's ``accuracy`` field holds it, and
  its ``details.metric`` says ``map50``), and the cascade is planned by
  :mod:`edgec.compiler.planning.detection_policy`;
* every stage stays FP32 (the INT8 and FP16 accuracy guards judge classifiers), and
  ``--preprocess`` and ``--partition`` are refused: neither is supported for detectors yet.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import onnx

from edgec.bundle import io as bundle_io
from edgec.bundle import trust
from edgec.bundle.gate import check_bundle
from edgec.bundle.manifest import Manifest, Source, StageEntry
from edgec.compiler.backend_choice import build_stage, evaluation_runner
from edgec.compiler.canonicalize import canonicalize
from edgec.compiler.detection.contract import PostprocessSpec, resolve_contract
from edgec.compiler.detection.custom import add_detection_students, load_detection_students
from edgec.compiler.detection.metrics import mean_average_precision
from edgec.compiler.detection.postprocess import attach_postprocess, outputs_json
from edgec.compiler.detection.students import derive_detection_students
from edgec.compiler.evaluate import predict
from edgec.compiler.loading import LoadedModel
from edgec.compiler.planning.cost_model import total_macs
from edgec.compiler.planning.detection_policy import plan_detection
from edgec.compiler.planning.link import LinkModel, request_bytes
from edgec.compiler.planning.stages import StagePlan, plan_stages
from edgec.compiler.progress import Reporter
from edgec.compiler.report.markdown import write_report
from edgec.config import CompileConfig
from edgec.data import Dataset, DetectionDataset, check_matches_model, load_dataset
from edgec.errors import BadInputError
from edgec.runtime import detection
from edgec.runtime.render import render_runtime
from edgec.targets import Target
from edgec.targets.base import Backend


def check_detection_request(config: CompileConfig) -> None:
    """Refuse, in one sentence, the options a detection compile does not support.

    Raises:
        BadInputError: ``--preprocess`` or ``--partition`` with a detector.
    """
    if config.preprocess is not None:
        raise BadInputError(
            "--preprocess is not supported for detection models yet; feed tensors of the "
            "model's input shape instead."
        )
    if config.partition != "off":
        raise BadInputError(
            "--partition is not supported for detection models yet; leave it out (the "
            "teacher runs whole on the gateway behind the device's student)."
        )


def _load_data(config: CompileConfig, loaded: LoadedModel) -> Dataset | None:
    if config.data is None:
        return None
    if len(loaded.inputs) != 1:
        raise BadInputError(
            f"--data needs a model with one input; {loaded.path.name} has {len(loaded.inputs)}."
        )
    data = load_dataset(config.data, seed=config.seed)
    check_matches_model(data, loaded.inputs[0].shape, None)
    return data


def _metric_version() -> dict:
    """faster-coco-eval's version, which computed the mAPs in the manifest."""
    import importlib.metadata

    try:
        return {"faster-coco-eval": importlib.metadata.version("faster-coco-eval")}
    except importlib.metadata.PackageNotFoundError:
        return {}


def _truth(data: Dataset | None) -> tuple[np.ndarray, np.ndarray] | None:
    if isinstance(data, DetectionDataset) and data.boxes_val is not None:
        return data.boxes_val, data.classes_val
    return None


def _map50(rows: np.ndarray, truth) -> float | None:
    if truth is None:
        return None
    return round(mean_average_precision([detection.unpack(r)[:3] for r in rows], *truth), 6)


def compile_detection(
    config: CompileConfig,
    reporter: Reporter,
    loaded: LoadedModel,
    target: Target,
    gateway: Target | None,
    backend: Backend,
    created_by: dict,
    edgec_version: str,
) -> dict:
    """Compile the detector ``loaded`` into a bundle; return the fields of a
    :class:`~edgec.compiler.driver.CompileResult`.

    Raises:
        BadInputError: Unsupported options, bad data, or outputs that fit no detection form.
    """
    check_detection_request(config)
    signing_key = trust.load_private_key(config.sign_key) if config.sign_key else None
    contract = resolve_contract(loaded.proto, config.postprocess, config.anchors)
    data = _load_data(config, loaded)
    truth = _truth(data)
    if config.precision not in ("auto", "fp32"):
        reporter.note(f"--precision {config.precision}: detection stages stay FP32")
    with reporter.step("Canonicalising the graph"):
        canonical = canonicalize(loaded.proto)
    custom = []
    if config.student_files:  # --student: checked against the teacher before anything trains
        custom = load_detection_students(canonical, contract, config, reporter)
    students, record = derive_detection_students(
        canonical, data, contract, target, backend.name, config, reporter
    )
    students, record = add_detection_students(
        students, record, custom, canonical, data, contract, config, reporter
    )
    stages = plan_stages(canonical, "fp32", students, target.gateway is not None)
    with reporter.step(f"Appending NMS ({contract.postprocess.text()}) to every stage"):
        for stage in stages:
            stage.model = attach_postprocess(stage.model, contract)
    with bundle_io.staging_dir(config.output, force=config.force) as root:
        entries, rows = [], {}
        for stage in stages:
            stage_target = gateway if stage.tier == "gateway" and gateway else target
            entry, out = _build(stage, root, stage_target, target, backend, data, truth, config,
                                reporter)  # fmt: skip
            entries.append(entry)
            rows[stage.name] = out
        manifest = Manifest(
            edgec_version=edgec_version,
            created_by={**created_by, **_metric_version()},
            source=Source(config.model.name, loaded.sha256),
            target={
                **target.summary(),
                "link": target.gateway.link.model_dump() if target.gateway else None,
            },
            inputs=tuple(s.to_json() for s in loaded.inputs),
            outputs=outputs_json(contract),
            data={**data.summary(), "task": "detection"} if data else None,
            students={**record, "contract": contract.to_json()},
            stages=tuple(entries),
        )
        with reporter.step("Planning the detection cascade and rendering the runtime"):
            policy = _policy(manifest, rows, truth, target, config)
            manifest = manifest.with_policy(policy)
            render_runtime(root, manifest.to_json())
        write_report(root, manifest.to_json())
        manifest = bundle_io.write_manifest(root, manifest)
        if signing_key is not None:
            trust.sign_bundle(root, signing_key)
    archive = bundle_io.write_archive(config.output) if config.archive else None
    gate = None
    if config.budget_ms is not None:
        gate = check_bundle(config.output, config.budget_ms, config.percentile)
    return {
        "bundle": config.output,
        "manifest": manifest,
        "gate": gate,
        "archive": archive,
        "signed_by": trust.key_id(signing_key.public_key()) if signing_key else None,
        "notes": tuple(
            s["backend_fallback"]["note"] for s in manifest["stages"] if "backend_fallback" in s
        ),
    }


def _build(
    stage: StagePlan,
    root: Path,
    stage_target: Target,
    device_target: Target,
    backend: Backend,
    data: Dataset | None,
    truth,
    config: CompileConfig,
    reporter: Reporter,
) -> tuple[StageEntry, np.ndarray | None]:
    """Build, time and evaluate one stage (its packed outputs on the validation split)."""
    stage_dir = root / "stages" / stage.name
    stage_dir.mkdir(parents=True, exist_ok=True)
    model_path = stage_dir / "model.onnx"
    onnx.save_model(stage.model, model_path)
    built = build_stage(stage.name, stage.model, "fp32", stage_dir, model_path, stage_target,
                        device_target, backend, config, reporter)  # fmt: skip
    entry = StageEntry(
        name=stage.name,
        tier=stage.tier,
        role=stage.role,
        macs=total_macs(stage.model),
        model=model_path.relative_to(root).as_posix(),
        artifact=built.artifact.path.relative_to(root).as_posix(),
        backend=built.backend.name,
        backend_options=built.artifact.metadata,
        precision="fp32",
        latency=built.latency,
        details={**built.manifest_fields(), **stage.extra, "metric": "map50"},
    )
    if data is None:
        return entry, None
    with reporter.step(f"Evaluating '{stage.name}' on {len(data.x_val)} validation frames"):
        runner, evaluated_with = evaluation_runner(
            built.backend, built.artifact, model_path, stage_target, "fp32"
        )
        rows = predict(runner, data.x_val)
    if not np.isfinite(rows).all():
        raise BadInputError(
            f"Stage '{stage.name}' gives NaN or infinite detections on the validation frames; "
            "check the model's numerics and the data's scale."
        )
    return dataclasses.replace(
        entry, accuracy=_map50(rows, truth), accuracy_measured_with=evaluated_with or None
    ), rows


def _policy(manifest: Manifest, rows: dict, truth, target: Target, config: CompileConfig) -> dict:
    """The manifest's ``policy`` from the detection planner (a lone stage answers all)."""
    entries = list(manifest.stages)
    names = [e.name for e in entries]
    spec = manifest.inputs[0]
    payload = request_bytes(spec["shape"], spec["dtype"])
    link = LinkModel.from_link(target.gateway.link) if target.gateway else None
    if any(rows.get(n) is None for n in names):
        if len(names) > 1:
            raise BadInputError(
                "A detection cascade is planned on --data; pass --data (or --students none)."
            )
        rows = {names[0]: np.full((1, 7), -1.0, np.float32)}
        rows[names[0]][0, 0] = 0.0
    plan = plan_detection(
        [rows[n] for n in names],
        [e.recorded_latency for e in entries],
        [e.tier for e in entries],
        names,
        link,
        payload,
        config.budget_ms,
        config.percentile,
        truth,
        config.accuracy_tolerance / 100.0,
        config.seed,
        score_cut=(config.postprocess or PostprocessSpec()).score,
    )
    return plan.to_json()
