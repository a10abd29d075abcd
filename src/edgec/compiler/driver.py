"""The compile driver: teacher + target (+ data) -> bundle, as plain function calls.

``compile_model`` is what ``edgec compile`` calls. Its steps are: resolve the target, refuse a
bad output early, load and validate the model, load the data, canonicalise, plan the stages,
then build, measure (or estimate) and evaluate each stage inside a staging directory that is
renamed into place only when the bundle is complete; finally, gate on the budget.

With ``--partition`` the teacher is split where the partition planner
(:mod:`edgec.compiler.planning.partition`) says: its prefix becomes a device stage (role ``prefix``)
and the rest a gateway stage that takes the intermediate tensor. Both parts stay FP32 (the
accuracy guard judges whole classifiers), and the rest is evaluated on what the link really
delivers: the prefix's outputs, through the chosen encoding.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from edgec.bundle import io as bundle_io
from edgec.bundle import trust
from edgec.bundle.gate import GateResult, check_bundle
from edgec.bundle.manifest import Manifest, Source, StageEntry
from edgec.compiler.backend_choice import build_stage, evaluation_runner, primary_backend
from edgec.compiler.batch_dim import batch_stage
from edgec.compiler.canonicalize import canonicalize
from edgec.compiler.evaluate import accuracy, agreement, predict
from edgec.compiler.fp16 import check_fp16_request, decide_fp16, wants_fp16
from edgec.compiler.int8.precision import (
    PrecisionOptions,
    check_request,
    decide_precision,
    write_calibration,
)
from edgec.compiler.int8.qat import QatRequest
from edgec.compiler.loading import LoadedModel, load_model
from edgec.compiler.planning.cost_model import total_macs
from edgec.compiler.planning.link import gateway_target, link_view
from edgec.compiler.planning.policy import policy_for_bundle
from edgec.compiler.planning.stages import StagePlan, partition_teacher, plan_stages
from edgec.compiler.preprocess import (
    attach_preprocess,
    frames_dataset,
    plan_for_model,
    tensors_dataset,
)
from edgec.compiler.progress import Reporter
from edgec.compiler.report.markdown import write_report
from edgec.compiler.students import derive_students
from edgec.config import CompileConfig
from edgec.data import Dataset, check_matches_model, load_dataset
from edgec.errors import BadInputError
from edgec.kernels.preprocess import PreprocessPlan
from edgec.passes.instrument import PassInstrument, PassRecord
from edgec.passes.partition import GATEWAY_ONLY
from edgec.runtime.render import render_runtime
from edgec.targets import Target, load_target
from edgec.targets.base import Backend
from edgec.targets.registry import choose_backend

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CompileResult:
    """What a compile produced.

    Attributes:
        bundle: The bundle directory.
        manifest: Its manifest.
        gate: The budget verdict when a budget was given.
        archive: The ``.tar.gz`` when requested.
        signed_by: Id of the key that signed the bundle (``--sign-key``), else ``None``.
        passes: One record per pass run (``--time-passes`` / ``--dump-ir``), else empty.
        notes: One line per thing the user should know, e.g. a stage built with a fallback
            backend (``backend_fallback``).
    """

    bundle: Path
    manifest: dict
    gate: GateResult | None = None
    archive: Path | None = None
    signed_by: str | None = None
    passes: tuple[PassRecord, ...] = ()
    notes: tuple[str, ...] = ()

    def to_json(self) -> dict:
        """Machine-readable summary for ``--json``."""
        return {
            "bundle": str(self.bundle),
            "archive": str(self.archive) if self.archive else None,
            "signed_by": self.signed_by,
            "target": self.manifest["target"],
            "stages": [
                {
                    k: s.get(k)
                    for k in (
                        "name",
                        "tier",
                        "role",
                        "backend",
                        "precision",
                        "macs",
                        "latency_ms",
                        "accuracy",
                        "agreement_with_teacher",
                    )
                }
                for s in self.manifest["stages"]
            ],
            "policy": self.manifest["policy"],
            "partition": _partition_summary(self.manifest.get("partition")),
            "gate": self.gate.to_json() if self.gate else None,
            "notes": list(self.notes),
            **({"passes": [r.to_json() for r in self.passes]} if self.passes else {}),
        }


def _partition_summary(section: dict | None) -> dict | None:
    """The partition section without its list of every option (that stays in the manifest)."""
    if section is None:
        return None
    return {k: v for k, v in section.items() if k != "options"}


def versions() -> dict[str, str]:
    """Versions of the tools that shaped a bundle (only those installed)."""
    found = {}
    dists = ("onnx", "onnxruntime", "onnx-ir", "onnxscript", "numpy", "apache-tvm")
    for dist in (*dists, "torch", "torch-pruning"):
        try:
            found[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


def edgec_version() -> str:
    """The installed edgec version."""
    try:
        return importlib.metadata.version("edgec")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


def _check_precision(config: CompileConfig, target: Target) -> str:
    """The precision stages are planned at; ``auto`` plans FP32 and decides per stage later."""
    precision = "fp32" if config.precision == "auto" else config.precision
    check_request(config.precision, target, config.data is not None)
    return precision


def _apply_precision(
    stage: StagePlan,
    root: Path,
    target: Target,
    stage_target: Target,
    backend: Backend,
    data: Dataset | None,
    config: CompileConfig,
    reporter: Reporter,
    qat: QatRequest | None = None,
) -> None:
    """Decide the stage's precision (FP16, INT8 or FP32) on ``stage_target``, the target it
    runs on (the gateway's for gateway stages), and write its calibration files (``qat``:
    ``--qat``, shared by the stages so the teacher's logits are computed once).

    FP16 (:mod:`edgec.compiler.fp16`) where asked for or, under ``auto``, where the stage's
    backend runs it on the target's GPU; ``--precision fp16`` was checked against the device
    target, so a gateway stage whose target cannot run FP16 stays FP32 (and says so).
    """
    if stage_target.name != target.name:
        backend = choose_backend(stage_target, config.backend)
    options = PrecisionOptions(
        requested=config.precision,
        calibration=config.calibration,
        calib_samples=config.calib_samples,
        max_accuracy_drop=config.max_accuracy_drop,
        min_sqnr_db=config.min_sqnr_db,
        compare_seconds=min(config.measure_seconds, 2.0),
        seed=config.seed,
        qat=qat,
    )
    if config.precision == "fp16" and stage_target.name != target.name:
        options = dataclasses.replace(options, requested="fp32")
        reporter.note(f"'{stage.name}': FP32 on {stage_target.name}, which runs no FP16")
    if wants_fp16(options.requested, stage_target, backend):
        with reporter.step(f"Converting '{stage.name}' to FP16 and checking it against FP32"):
            fp16 = decide_fp16(stage.model, stage_target, backend.name, data, options, stage.name)
        reporter.note(f"'{stage.name}': {fp16.describe()}")
        stage.model, stage.precision = fp16.model, fp16.precision
        stage.extra.update(fp16.manifest_fields())
        stage.extra["calibration"] = None
        return
    decision = decide_precision(
        stage.model, stage_target, backend.name, data, options, reporter, stage.name
    )
    if decision.precision == "int8" or decision.decided_by != "requested":
        reporter.note(f"'{stage.name}': {decision.describe()}")
    stage.model, stage.precision = decision.model, decision.precision
    stage.extra.update(decision.manifest_fields())
    stage_dir = root / "stages" / stage.name
    stage.extra["calibration"] = write_calibration(decision, stage_dir, root, stage_target)


def _check_fits_memory(model: onnx.ModelProto, name: str, target: Target) -> None:
    """Refuse a model whose weights alone exceed the target's RAM (before anything is written).

    Raises:
        BadInputError: The weights do not fit.
    """
    weights = sum(
        int(np.prod(init.dims, dtype=np.int64))
        * onnx.helper.tensor_dtype_to_np_dtype(init.data_type).itemsize
        for init in model.graph.initializer
    )
    ram = target.memory.ram_gb * 2**30
    if weights > ram:
        raise BadInputError(
            f"{name} does not fit {target.name}: its weights alone take "
            f"{weights / 2**20:,.1f} MB and the device has {target.memory.ram_gb:g} GB of RAM; "
            "use a smaller model or a target with more memory."
        )


def _load_data(
    config: CompileConfig, loaded: LoadedModel, frames: PreprocessPlan | None = None
) -> Dataset | None:
    """The ``--data`` set; with ``--preprocess`` (``frames``) it must hold camera frames."""
    if config.data is None:
        return None
    if len(loaded.inputs) != 1:
        raise BadInputError(
            f"--data needs a model with one input; {loaded.path.name} has {len(loaded.inputs)}."
        )
    dataset = load_dataset(config.data, seed=config.seed)
    out_shape = loaded.outputs[0].shape
    classes = out_shape[-1] if len(out_shape) == 2 and out_shape[-1] else None
    if frames is not None:
        dataset = frames_dataset(dataset, frames)
    check_matches_model(dataset, frames.frame_shape if frames else loaded.inputs[0].shape, classes)
    return dataset


def _tier_target(stage: StagePlan, target: Target, gateway: Target | None) -> Target:
    """The target a stage runs on: ``gateway`` (the resolved gateway target) for gateway
    stages, else the device's."""
    if stage.tier == "gateway" and gateway is not None:
        return gateway
    return target


def _build_stage(
    stage: StagePlan,
    root: Path,
    target: Target,
    backend: Backend,
    data: Dataset | None,
    teacher_logits: np.ndarray | None,
    reporter: Reporter,
    device_target: Target,
    config: CompileConfig,
    x_eval: np.ndarray | None = None,
) -> tuple[StageEntry, np.ndarray | None]:
    """Build, time and evaluate one stage; return its manifest entry and its outputs on the
    validation split (``x_eval`` replaces its inputs: a partition's rest takes the prefix's
    outputs)."""
    stage_dir = root / "stages" / stage.name
    stage_dir.mkdir(parents=True, exist_ok=True)  # the precision step may have written to it
    model_path = stage_dir / "model.onnx"
    onnx.save_model(stage.model, model_path)
    # The backend (per stage with --backend auto), its artifact and latency (backend_choice).
    built = build_stage(
        stage.name,
        stage.model,
        stage.precision,
        stage_dir,
        model_path,
        target,
        device_target,
        backend,
        config,
        reporter,
    )
    backend, artifact = built.backend, built.artifact
    entry = StageEntry(
        name=stage.name,
        tier=stage.tier,
        role=stage.role,
        macs=total_macs(stage.model),
        model=model_path.relative_to(root).as_posix(),
        artifact=artifact.path.relative_to(root).as_posix(),
        backend=backend.name,
        backend_options=artifact.metadata,
        precision=stage.precision,
        latency=built.latency,
        details={**built.manifest_fields(), **stage.extra},
    )
    if data is None:
        return entry, None
    x_val = data.x_val if x_eval is None else x_eval
    with reporter.step(f"Evaluating '{stage.name}' on {len(x_val)} validation samples"):
        runner, evaluated_with = evaluation_runner(
            backend, artifact, model_path, target, stage.precision
        )
        logits = predict(runner, x_val)
    if not np.isfinite(logits).all():  # the bundle would answer NaN: fail the build
        raise BadInputError(
            f"Stage '{stage.name}' gives NaN or infinite outputs on "
            f"{int((~np.isfinite(logits.reshape(len(logits), -1))).any(axis=1).sum())} of "
            f"{len(logits)} validation samples; check the model's numerics and the data's "
            "scale."
        )
    if evaluated_with and stage.precision == "fp16":
        # ORT's CPU provider has no FP16 kernels for most ops: it casts around them.
        evaluated_with += (
            ", on the FP16 ONNX: ops without an FP16 CPU kernel run in FP32 between casts "
            "(the accuracy guard judged a stricter FP16 emulation)"
        )
    scores = {"accuracy_measured_with": evaluated_with or None}
    if stage.role != "prefix":  # a prefix outputs intermediate tensors: nothing to score
        if data.has_labels:
            scores["accuracy"] = round(accuracy(logits, data.y_val), 6)
        if teacher_logits is not None and stage.role == "student":
            scores["agreement_with_teacher"] = round(agreement(logits, teacher_logits), 6)
    return dataclasses.replace(entry, **scores), logits


def _with_batch_dim(
    entry: StageEntry, stage: StagePlan, root: Path, target: Target, reporter: Reporter
) -> StageEntry:
    """A gateway stage with a dynamic batch dimension when it checks out (batch_dim)."""
    with reporter.step(f"Giving '{stage.name}' a dynamic batch dimension for the gateway"):
        batching = batch_stage(
            stage.model,
            root / entry.model,
            root / entry.artifact,
            dict(entry.backend_options),
            entry.backend,
            target,
            stage.precision,
        )
    if batching["max_batch"] > 1:
        per_frame = batching["per_frame_ms"] or {}
        reporter.note(
            f"'{stage.name}': batch {batching['max_batch']} checked against batch 1; "
            + (", ".join(f"batch {k} {v:.3f} ms/frame" for k, v in per_frame.items()) or "")
            + ("" if per_frame else batching["timing"])
        )
    else:
        reporter.note(f"'{stage.name}': batch 1 only ({batching['reason']})")
    return dataclasses.replace(entry, details={**entry.details, "batching": batching})


@dataclass(frozen=True)
class PreparedModel:
    """The target-independent start of a compile: the loaded model and its canonical form.

    A zoo (several targets, :mod:`edgec.compiler.zoo`) prepares it once and passes it to each
    target's :func:`compile_model`, which works on its own copy of ``canonical``.

    Attributes:
        loaded: The loaded, validated model.
        canonical: Its canonical form.
        passes: The canonicalisation's pass records (``--time-passes`` / ``--dump-ir``).
    """

    loaded: LoadedModel
    canonical: onnx.ModelProto
    passes: tuple[PassRecord, ...] = ()


def prepare_model(config: CompileConfig, reporter: Reporter | None = None) -> PreparedModel:
    """Load and canonicalise ``config.model`` (what every target's compile starts with).

    Raises:
        BadInputError: A bad model or input shape.
    """
    reporter = reporter or Reporter(quiet=True)
    with reporter.step(f"Loading {config.model}"):
        loaded = load_model(config.model, config.input_shapes)
    for note in loaded.notes:
        reporter.note(note)
    instrument = None
    if config.time_passes or config.dump_ir is not None:
        instrument = PassInstrument(dump_dir=config.dump_ir)
    with reporter.step("Canonicalising the graph"):
        canonical = canonicalize(loaded.proto, instrument)
    return PreparedModel(loaded, canonical, tuple(instrument.records) if instrument else ())


def compile_model(
    config: CompileConfig,
    reporter: Reporter | None = None,
    prepared: PreparedModel | None = None,
) -> CompileResult:
    """Compile a teacher into a bundle per ``config``.

    ``prepared`` (from :func:`prepare_model`, same model and input shapes) skips loading and
    canonicalising.

    Raises:
        BadInputError: Any bad model, data, target, flag or output path (nothing is written).
        MissingDependencyError: A needed backend is not installed.
    """
    reporter = reporter or Reporter(quiet=True)
    target = load_target(config.target)
    gateway = gateway_target(target)  # resolved once, passed to whatever runs there
    bundle_io.check_output(config.output, config.force)
    signing_key = trust.load_private_key(config.sign_key) if config.sign_key else None
    precision = _check_precision(config, target)
    backend = primary_backend(target, config)
    check_fp16_request(config.precision, target, backend)  # FP16 needs the backend on a GPU
    if prepared is None:
        with reporter.step(f"Loading {config.model}"):
            loaded = load_model(config.model, config.input_shapes)
        for note in loaded.notes:
            reporter.note(note)
    else:
        loaded = prepared.loaded
    frames = plan_for_model(config.preprocess, loaded) if config.preprocess else None
    data = _load_data(config, loaded, frames)
    instrument = None
    if prepared is None and (config.time_passes or config.dump_ir is not None):
        instrument = PassInstrument(dump_dir=config.dump_ir)
    if prepared is None:
        with reporter.step("Canonicalising the graph"):
            canonical = canonicalize(loaded.proto, instrument)
    else:
        canonical = onnx.ModelProto()
        canonical.CopyFrom(prepared.canonical)  # later steps may edit it: never the shared one
    _check_fits_memory(canonical, config.model.name, target)
    # Students learn from tensors: with --preprocess, the frames through the NumPy reference.
    tensors = tensors_dataset(data, frames) if frames and data else data
    custom = []
    if config.student_files:  # --student: checked against the teacher before anything trains
        from edgec.compiler.students.custom import add_custom_students, load_custom_students

        custom = load_custom_students(canonical, config, reporter)
    students = derive_students(
        canonical, tensors, target, backend.name, precision, config, reporter
    )
    if custom:  # the user's own architectures join the ladder
        students = add_custom_students(students, custom, canonical, tensors, config, reporter)
    stages = plan_stages(canonical, precision, students.students, target.gateway is not None)
    if frames is not None:
        with reporter.step(f"Fusing pre-processing ({frames.spec.text()}) into every stage"):
            for stage in stages:
                stage.model = attach_preprocess(stage.model, frames)
    partition = None
    if config.partition != "off":
        stages, partition = partition_teacher(stages, target, gateway, config, reporter)

    # --qat distils from the FP32 teacher (the stage's own outputs once it is partitioned).
    qat = QatRequest(
        mode=config.qat,
        teacher=next((s.model for s in stages if s.role == "teacher"), None),
        temperature=config.temperature,
        alpha=config.alpha,
        seed=config.seed,
    )
    with bundle_io.staging_dir(config.output, force=config.force) as root:
        entries, teacher_logits, outputs, x_eval = [], None, {}, None
        if partition and partition.cut == GATEWAY_ONLY and data is not None:
            x_eval = link_view(data.x_val, partition.encoding)  # the input crosses the link
        # The teacher is evaluated first (after its prefix, if partitioned) so students can
        # report agreement with it.
        build_order = {"prefix": 0, "teacher": 1}
        for stage in sorted(stages, key=lambda s: build_order.get(s.role, 2)):
            stage_target = _tier_target(stage, target, gateway)
            if stage.role != "prefix" and "partition_input" not in stage.extra:
                _apply_precision(
                    stage, root, target, stage_target, backend, data, config, reporter, qat
                )
            entry, logits = _build_stage(
                stage,
                root,
                stage_target,
                backend,
                data,
                teacher_logits,
                reporter,
                target,
                config,
                x_eval if stage.role == "teacher" else None,
            )
            if stage.tier == "gateway":
                entry = _with_batch_dim(entry, stage, root, stage_target, reporter)
            if stage.role == "prefix" and logits is not None:
                x_eval = link_view(logits, partition.encoding)
            if stage.role == "teacher":
                teacher_logits = logits
            entries.append(entry)
            outputs[stage.name] = logits  # validation outputs, for the cascade planner
        order = [s.name for s in stages]
        entries.sort(key=lambda e: order.index(e.name))
        manifest = Manifest(
            edgec_version=edgec_version(),
            created_by=versions(),
            source=Source(config.model.name, loaded.sha256),
            target={
                **target.summary(),
                "link": target.gateway.link.model_dump() if target.gateway else None,
            },
            inputs=(
                (frames.frame_json(),) if frames else tuple(s.to_json() for s in loaded.inputs)
            ),
            outputs=tuple(spec.to_json() for spec in loaded.outputs),
            data=data.summary() if data else None,
            students=students.record,
            stages=tuple(entries),
            partition=partition,
        )
        labels = data.y_val if data is not None and data.has_labels else None
        link = target.gateway.link if target.gateway else None
        with reporter.step("Planning the cascade and rendering the runtime"):
            manifest = policy_for_bundle(manifest, outputs, labels, link, config)
            render_runtime(root, manifest.to_json())  # before the manifest: its files are hashed
        write_report(root, manifest.to_json())
        manifest = bundle_io.write_manifest(root, manifest)
        if signing_key is not None:  # inside the staging dir: never visible unsigned
            trust.sign_bundle(root, signing_key)

    archive = bundle_io.write_archive(config.output) if config.archive else None
    gate = None
    if config.budget_ms is not None:
        gate = check_bundle(config.output, config.budget_ms, config.percentile)
    signed_by = trust.key_id(signing_key.public_key()) if signing_key else None
    return CompileResult(
        bundle=config.output,
        manifest=manifest,
        gate=gate,
        archive=archive,
        signed_by=signed_by,
        passes=tuple(instrument.records) if instrument else (prepared.passes if prepared else ()),
        notes=tuple(
            s["backend_fallback"]["note"] for s in manifest["stages"] if "backend_fallback" in s
        ),
    )
