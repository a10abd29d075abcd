"""The backend protocol and the plain data that crosses it.

A backend turns a stage's ONNX model into an :class:`Artifact` for a target, loads an artifact
into a :class:`Runner`, and measures latency. Latency always says where it came from
(:data:`LatencySource`). Backends import their heavy dependencies lazily, inside their
functions, so ``available()`` can report a missing one instead of failing at import.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

import numpy as np

from edgec.targets.descriptor import Target

LatencySource = Literal["measured-host", "measured-device", "estimated"]
# Weakest first: a combination of latencies is only as trustworthy as its weakest part.
_SOURCE_STRENGTH = {"estimated": 0, "measured-host": 1, "measured-device": 2}


@dataclass(frozen=True)
class LatencyStats:
    """A latency distribution in milliseconds and where it came from.

    Attributes:
        p50: Median.
        p90: 90th percentile.
        p99: 99th percentile.
        mean: Mean.
        source: ``measured-host``, ``measured-device`` or ``estimated``.
        runs: How many timed runs (0 for estimates).
    """

    p50: float
    p90: float
    p99: float
    mean: float
    source: LatencySource
    runs: int = 0

    def at(self, percentile: int) -> float:
        """The latency at percentile 50, 90 or 99."""
        return {50: self.p50, 90: self.p90, 99: self.p99}[percentile]

    def to_json(self) -> dict:
        """The manifest form."""
        return {
            "p50": round(self.p50, 4),
            "p90": round(self.p90, 4),
            "p99": round(self.p99, 4),
            "mean": round(self.mean, 4),
            "source": self.source,
            "runs": self.runs,
        }

    @classmethod
    def from_json(cls, data: dict) -> LatencyStats:
        """Read the manifest form back."""
        return cls(
            p50=float(data["p50"]),
            p90=float(data["p90"]),
            p99=float(data["p99"]),
            mean=float(data.get("mean", data["p50"])),
            source=data["source"],
            runs=int(data.get("runs", 0)),
        )

    @classmethod
    def total(cls, parts: list[LatencyStats]) -> LatencyStats:
        """Steps run one after another: quantiles add up (an upper bound for p90/p99, exact
        for the mean), and the source is the weakest part's."""
        return cls(
            p50=sum(s.p50 for s in parts),
            p90=sum(s.p90 for s in parts),
            p99=sum(s.p99 for s in parts),
            mean=sum(s.mean for s in parts),
            source=weakest_source([s.source for s in parts]),
        )

    @classmethod
    def from_samples(cls, samples_ms: np.ndarray, source: LatencySource) -> LatencyStats:
        """Summarise timed runs."""
        p50, p90, p99 = np.percentile(samples_ms, [50, 90, 99])
        return cls(
            float(p50), float(p90), float(p99), float(np.mean(samples_ms)), source, len(samples_ms)
        )

    @classmethod
    def fixed(cls, ms: float, source: LatencySource = "estimated") -> LatencyStats:
        """A single estimate used at every percentile."""
        return cls(ms, ms, ms, ms, source, 0)


def weakest_source(sources: list[LatencySource]) -> LatencySource:
    """The least trustworthy of several latency sources."""
    return min(sources, key=_SOURCE_STRENGTH.__getitem__)


@dataclass(frozen=True)
class BuildOptions:
    """What a backend build may be asked for.

    Attributes:
        precision: ``fp32``, ``fp16`` or ``int8`` (the model is already quantized for int8).
        threads: Inference threads; ``None`` means the target's core count.
        tune_trials: Autotuning trials for backends that tune (0: no tuning).
        tuning_cache: Directory of tuning records reused across compiles (``None``: none).
        device: Device URL (``rpc://HOST:PORT``) where tuning measures candidates.
        seed: Seed for searches that sample (tuning).
        progress: Called with one-line progress updates during long builds (tuning).
    """

    precision: str = "fp32"
    threads: int | None = None
    tune_trials: int = 0
    tuning_cache: Path | None = None
    device: str | None = None
    seed: int = 0
    progress: Callable[[str], None] | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Artifact:
    """What a backend built for one stage.

    Attributes:
        backend: The backend's registry name.
        path: The main artifact file, inside the stage's directory.
        target: The target name it was built for.
        files: Every file the build wrote (including ``path``).
        metadata: Backend facts for the manifest (optimisation level, threads, ...).
    """

    backend: str
    path: Path
    target: str
    files: tuple[Path, ...]
    metadata: dict = field(default_factory=dict)


@runtime_checkable
class Runner(Protocol):
    """A loaded artifact that maps named inputs to the model's outputs."""

    input_names: list[str]
    output_names: list[str]

    def run(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Run once; outputs in the model's output order."""
        ...


@runtime_checkable
class Backend(Protocol):
    """One compiler/runtime behind the same fixed phases.

    Besides the phases, a backend answers the questions the compiler asks before choosing it
    (the compiler never branches on a backend's name):

    * ``measures_on_device``: ``measure`` takes a device URL (``rpc://HOST:PORT``);
    * ``tunes``: ``build`` honours ``tune_trials`` / ``tuning_cache``;
    * ``needs_tuning_on_cpu``: untuned, its CPU code is too slow to be worth building as a
      candidate against the others on this machine;
    * ``symmetric_int8_activations``: its INT8 needs activations with zero point 0;
    * ``can_build(target)``: whether it can build for that target here (toolchains included);
    * ``uses_accelerator(target)``: whether its artifact for that target runs on the target's
      accelerator (GPU, TPU), not its CPU;
    * ``runs_here(artifact)``: whether this machine can run the artifact;
    * ``supports_op(...)`` / ``op_support_source``: its documented ONNX op list.

    :class:`BackendBase` gives every question a conservative default answer.
    """

    name: str
    measures_on_device: bool
    tunes: bool
    needs_tuning_on_cpu: bool
    symmetric_int8_activations: bool
    op_support_source: str

    def available(self) -> tuple[bool, str]:
        """Whether the backend can build here, and why not when it cannot."""
        ...

    def can_build(self, target: Target) -> tuple[bool, str]:
        """Whether the backend can build for ``target`` here, and why not when it cannot."""
        ...

    def uses_accelerator(self, target: Target) -> bool:
        """Whether an artifact for ``target`` runs on the target's accelerator."""
        ...

    def runs_here(self, artifact: Artifact) -> bool:
        """Whether this machine can run ``artifact``."""
        ...

    def supports_op(self, op_type: str, domain: str = "", dtypes: tuple[str, ...] = ()) -> bool:
        """Whether the backend's documented op list has ``op_type`` (with these dtypes)."""
        ...

    def build(self, model_path: Path, target: Target, out_dir: Path, options: BuildOptions):
        """Build ``model_path`` for ``target`` into ``out_dir``; return an :class:`Artifact`."""
        ...

    def load(self, artifact: Artifact) -> Runner:
        """Load an artifact on this machine."""
        ...

    def measure(
        self, artifact: Artifact, where: str = "host", policy: MeasurePolicy | None = None
    ) -> LatencyStats:
        """Time the artifact ``where`` (``host`` here, or a device URL where supported)."""
        ...


class BackendBase:
    """Default answers to the :class:`Backend` questions: measures only here, does not tune,
    builds for any target when available, runs on the target's CPU, runs nothing here, and
    documents no op. Backends subclass it and override what differs."""

    name: str = ""
    measures_on_device: bool = False
    tunes: bool = False
    needs_tuning_on_cpu: bool = False
    symmetric_int8_activations: bool = False
    op_support_source: str = "no documented op list"

    def available(self) -> tuple[bool, str]:
        """Whether the backend can build here (subclasses say)."""
        return False, f"the {self.name} backend does not say whether it is available"

    def can_build(self, target: Target) -> tuple[bool, str]:
        """Available means able to build for any target, unless a subclass knows better."""
        return self.available()

    def uses_accelerator(self, target: Target) -> bool:
        """Artifacts run on the target's CPU."""
        return False

    def runs_here(self, artifact: Artifact) -> bool:
        """Nothing is known to run here."""
        return False

    def supports_op(self, op_type: str, domain: str = "", dtypes: tuple[str, ...] = ()) -> bool:
        """No documented op list: nothing counts as supported."""
        return False


@dataclass(frozen=True)
class MeasurePolicy:
    """How long to time a runner: warm up, then run until the percentiles settle.

    Attributes:
        warmup_runs: Untimed runs first (caches, lazy allocations, thread pools).
        min_runs: Never fewer timed runs than this.
        max_runs: Never more.
        min_seconds: Keep running at least this long, so short models get many samples.
        max_seconds: Stop after this long even if not settled.
        tolerance: Stop once p50 and p99 moved less than this share between two checks.
    """

    warmup_runs: int = 5
    min_runs: int = 50
    max_runs: int = 5000
    min_seconds: float = 0.5
    max_seconds: float = 10.0
    tolerance: float = 0.05


DEFAULT_MEASURE_POLICY = MeasurePolicy()


def time_runner(
    runner: Runner, inputs: dict[str, np.ndarray], policy: MeasurePolicy = DEFAULT_MEASURE_POLICY
) -> LatencyStats:
    """Time ``runner`` adaptively on this machine (source ``measured-host``).

    After warm-up, runs in rounds; once both the minimum count and duration are reached it
    stops when p50 and p99 moved less than ``policy.tolerance`` since the previous round (a
    p99 needs ~100 samples to mean anything, so the floor is generous).
    """
    started = time.perf_counter()
    for _ in range(policy.warmup_runs):
        runner.run(inputs)
        if time.perf_counter() - started > policy.max_seconds / 4:
            break  # a slow model is warm after one or two runs
    samples: list[float] = []
    started = time.perf_counter()
    previous: tuple[float, float] | None = None
    while True:
        for _ in range(max(policy.min_runs // 2, 10)):
            t0 = time.perf_counter()
            runner.run(inputs)
            samples.append((time.perf_counter() - t0) * 1000.0)
            if time.perf_counter() - started >= policy.max_seconds:
                break
        elapsed = time.perf_counter() - started
        current = tuple(np.percentile(samples, [50, 99]))
        if len(samples) >= policy.max_runs or elapsed >= policy.max_seconds:
            break
        settled = previous is not None and all(
            abs(c - p) <= policy.tolerance * max(p, 1e-9)
            for c, p in zip(current, previous, strict=True)
        )
        if settled and len(samples) >= policy.min_runs and elapsed >= policy.min_seconds:
            break
        previous = current
    return LatencyStats.from_samples(np.asarray(samples), "measured-host")
