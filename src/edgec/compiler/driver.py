"""The compile driver: teacher + target (+ data) -> bundle, as plain function calls.

``compile_model`` is what ``edgec compile`` calls. Its steps are: resolve the target, refuse a
bad output early, load and validate the model, load the data, canonicalise, plan the stages,
then build, measure (or estimate) and evaluate each stage inside a staging directory that is
renamed into place only when the bundle is complete; finally, gate on the budget.
"""

from __future__ import annotations

import importlib.metadata
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from edgec.compiler import bundle as bundle_io
from edgec.compiler.canonicalize import canonicalize
from edgec.compiler.cost_model import estimate_latency, total_macs
from edgec.compiler.evaluate import accuracy, agreement, predict
from edgec.compiler.gate import GateResult, check_bundle, pipeline_latency
from edgec.compiler.loading import LoadedModel, load_model
from edgec.compiler.progress import Reporter
from edgec.compiler.report import write_report
from edgec.config import CompileConfig
from edgec.data import Dataset, check_matches_model, load_dataset
from edgec.errors import BadInputError
from edgec.targets import BuildOptions, LatencyStats, Target, choose_backend, load_target
from edgec.targets.base import Backend, MeasurePolicy

logger = logging.getLogger(__name__)


@dataclass
class StagePlan:
    """A stage before it is built.

    Attributes:
        name: Directory name under ``stages/`` and the name in the manifest.
        role: ``student`` or ``teacher``.
        tier: ``device`` or ``gateway``.
        model: The stage's final ONNX model.
        precision: ``fp32``, ``fp16`` or ``int8``.
        extra: Additional manifest fields (e.g. why students were skipped).
    """

    name: str
    role: str
    tier: str
    model: onnx.ModelProto
    precision: str = "fp32"
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class CompileResult:
    """What a compile produced.

    Attributes:
        bundle: The bundle directory.
        manifest: Its manifest.
        gate: The budget verdict when a budget was given.
        archive: The ``.tar.gz`` when requested.
    """

    bundle: Path
    manifest: dict
    gate: GateResult | None = None
    archive: Path | None = None

    def to_json(self) -> dict:
        """Machine-readable summary for ``--json``."""
        return {
            "bundle": str(self.bundle),
            "archive": str(self.archive) if self.archive else None,
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
            "gate": self.gate.to_json() if self.gate else None,
        }


def versions() -> dict[str, str]:
    """Versions of the tools that shaped a bundle (only those installed)."""
    found = {}
    for dist in ("onnx", "onnxruntime", "onnx-ir", "onnxscript", "numpy", "apache-tvm", "torch"):
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
    precision = "fp32" if config.precision == "auto" else config.precision
    if precision != "fp32":
        raise BadInputError(
            f"--precision {precision} is not supported by this edgec yet; use fp32."
        )
    return precision


def _load_data(config: CompileConfig, loaded: LoadedModel) -> Dataset | None:
    if config.data is None:
        return None
    if len(loaded.inputs) != 1:
        raise BadInputError(
            f"--data needs a model with one input; {loaded.path.name} has {len(loaded.inputs)}."
        )
    dataset = load_dataset(config.data, seed=config.seed)
    out_shape = loaded.outputs[0].shape
    classes = out_shape[-1] if len(out_shape) == 2 and out_shape[-1] else None
    check_matches_model(dataset, loaded.inputs[0].shape, classes)
    return dataset


def plan_stages(model: onnx.ModelProto, precision: str) -> list[StagePlan]:
    """The cascade's stages in order; today the canonical teacher alone, on the device."""
    return [
        StagePlan(name="teacher", role="teacher", tier="device", model=model, precision=precision)
    ]


def _measure_or_estimate(
    backend: Backend, artifact, stage: StagePlan, target: Target, seconds: float
) -> LatencyStats:
    if target.is_host:
        return backend.measure(artifact, "host", MeasurePolicy(max_seconds=seconds))
    return estimate_latency(stage.model, target, backend.name, stage.precision)


def _build_stage(
    stage: StagePlan,
    root: Path,
    target: Target,
    backend: Backend,
    data: Dataset | None,
    teacher_logits: np.ndarray | None,
    reporter: Reporter,
    measure_seconds: float,
) -> tuple[dict, np.ndarray | None]:
    stage_dir = root / "stages" / stage.name
    stage_dir.mkdir(parents=True)
    model_path = stage_dir / "model.onnx"
    onnx.save_model(stage.model, model_path)
    with reporter.step(f"Building stage '{stage.name}' with {backend.name}"):
        artifact = backend.build(model_path, target, stage_dir, BuildOptions(stage.precision))
    where = "on this machine" if target.is_host else f"for {target.name} (cost model)"
    with reporter.step(f"Latency of '{stage.name}' {where}"):
        latency = _measure_or_estimate(backend, artifact, stage, target, measure_seconds)
    entry = {
        "name": stage.name,
        "tier": stage.tier,
        "role": stage.role,
        "macs": total_macs(stage.model),
        "model": model_path.relative_to(root).as_posix(),
        "artifact": artifact.path.relative_to(root).as_posix(),
        "backend": backend.name,
        "backend_options": artifact.metadata,
        "precision": stage.precision,
        "latency_ms": latency.to_json(),
        "accuracy": None,
        **stage.extra,
    }
    logits = None
    if data is not None:
        with reporter.step(f"Evaluating '{stage.name}' on {len(data.x_val)} validation samples"):
            logits = predict(backend.load(artifact), data.x_val)
        if data.has_labels:
            entry["accuracy"] = round(accuracy(logits, data.y_val), 6)
        if teacher_logits is not None and stage.role == "student":
            entry["agreement_with_teacher"] = round(agreement(logits, teacher_logits), 6)
    return entry, logits


def compile_model(config: CompileConfig, reporter: Reporter | None = None) -> CompileResult:
    """Compile a teacher into a bundle per ``config``.

    Raises:
        BadInputError: Any bad model, data, target, flag or output path (nothing is written).
        MissingDependencyError: A needed backend is not installed.
    """
    reporter = reporter or Reporter(quiet=True)
    target = load_target(config.target)
    bundle_io.check_output(config.output, config.force)
    precision = _check_precision(config, target)
    backend = choose_backend(target, config.backend)
    with reporter.step(f"Loading {config.model}"):
        loaded = load_model(config.model, config.input_shapes)
    data = _load_data(config, loaded)
    with reporter.step("Canonicalising the graph"):
        canonical = canonicalize(loaded.proto)
    stages = plan_stages(canonical, precision)

    with bundle_io.staging_dir(config.output, force=config.force) as root:
        entries, teacher_logits = [], None
        # The teacher is evaluated first so students can report agreement with it.
        for stage in sorted(stages, key=lambda s: s.role != "teacher"):
            entry, logits = _build_stage(
                stage, root, target, backend, data, teacher_logits, reporter, config.measure_seconds
            )
            if stage.role == "teacher":
                teacher_logits = logits
            entries.append(entry)
        order = [s.name for s in stages]
        entries.sort(key=lambda e: order.index(e["name"]))
        manifest = {
            "schema": bundle_io.SCHEMA,
            "edgec_version": edgec_version(),
            "created_by": versions(),
            "source": {"path": config.model.name, "sha256": loaded.sha256},
            "target": {
                **target.summary(),
                "link": target.gateway.link.model_dump() if target.gateway else None,
            },
            "inputs": [spec.to_json() for spec in loaded.inputs],
            "outputs": [spec.to_json() for spec in loaded.outputs],
            "data": data.summary() if data else None,
            "stages": entries,
        }
        manifest["policy"] = {
            "budget_ms": config.budget_ms,
            "percentile": config.percentile,
            "latency_ms": pipeline_latency({**manifest, "policy": {}}).to_json(),
            "expected_accuracy": entries[-1].get("accuracy"),
        }
        write_report(root, manifest)
        manifest = bundle_io.write_manifest(root, manifest)

    archive = bundle_io.write_archive(config.output) if config.archive else None
    gate = None
    if config.budget_ms is not None:
        gate = check_bundle(config.output, config.budget_ms, config.percentile)
    return CompileResult(bundle=config.output, manifest=manifest, gate=gate, archive=archive)
