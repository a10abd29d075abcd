"""The latency gate: does a bundle meet its budget? For CI (``edgec check``) and compile.

The gate reads the bundle's manifest. The pipeline latency at a percentile is the policy's
(the cascade planner's) when present, else the sum over stages (the path that runs every
stage). Each stage is reported too. Its verdict names the percentile, the margin and the
latency source, because an ``estimated`` pass is weaker evidence than a ``measured`` one;
``require_measured`` turns an estimate into a failure.

Without a budget from the caller, the gate uses the one the bundle was compiled for (the
manifest's ``policy.budget_ms``, at the policy's percentile) and says so; a bundle compiled
without a budget then needs one given.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from edgec.bundle.io import read_manifest
from edgec.errors import BadInputError
from edgec.targets.base import LatencyStats


@dataclass(frozen=True)
class GateCheck:
    """One checked quantity.

    Attributes:
        name: ``pipeline`` or a stage name.
        latency_ms: Latency at the gate's percentile.
        source: Where the latency came from.
        passed: Whether it fits the budget (and the source is acceptable).
        message: One line for people.
    """

    name: str
    latency_ms: float
    source: str
    passed: bool
    message: str


@dataclass(frozen=True)
class GateResult:
    """The verdict over a bundle.

    Attributes:
        bundle: The bundle checked.
        budget_ms: The budget.
        percentile: The percentile checked.
        checks: The pipeline check first, then one per stage (informational).
        budget_source: ``given`` (by the caller) or ``manifest`` (the bundle's own budget).
    """

    bundle: str
    budget_ms: float
    percentile: int
    checks: tuple[GateCheck, ...]
    budget_source: str = "given"

    @property
    def budget_note(self) -> str | None:
        """Where the budget came from, when the caller did not give it; else ``None``."""
        if self.budget_source != "manifest":
            return None
        return f"budget {self.budget_ms:g} ms at p{self.percentile} from the bundle's manifest"

    @property
    def passed(self) -> bool:
        """The gate passes when the pipeline check passes."""
        return self.checks[0].passed

    @property
    def summary(self) -> str:
        """The pipeline check's message."""
        return self.checks[0].message

    def to_json(self) -> dict:
        """Machine-readable form for ``--json``."""
        return {
            "bundle": self.bundle,
            "budget_ms": self.budget_ms,
            "percentile": self.percentile,
            "budget_source": self.budget_source,
            "passed": self.passed,
            "checks": [c.__dict__ for c in self.checks],
        }


def pipeline_latency(manifest: dict) -> LatencyStats:
    """The end-to-end latency distribution a bundle promises."""
    policy = manifest.get("policy") or {}
    if "latency_ms" in policy:
        return LatencyStats.from_json(policy["latency_ms"])
    return LatencyStats.total([LatencyStats.from_json(s["latency_ms"]) for s in manifest["stages"]])


def _verdict(name, latency, source, budget_ms, percentile, require_measured) -> GateCheck:
    over = latency - budget_ms
    fits = over <= 0
    measured_ok = not (require_measured and source == "estimated")
    if fits and measured_ok:
        msg = (
            f"{name}: p{percentile} {latency:.3f} ms within the {budget_ms:g} ms budget "
            f"({-over:.3f} ms to spare, {source})"
        )
    elif not fits:
        msg = (
            f"{name}: p{percentile} {latency:.3f} ms exceeds the {budget_ms:g} ms budget "
            f"by {over:.3f} ms ({100 * over / budget_ms:.1f}%, {source})"
        )
    else:
        msg = (
            f"{name}: p{percentile} {latency:.3f} ms fits the budget but is {source}, "
            "and --require-measured asks for a measurement"
        )
    return GateCheck(name, round(latency, 4), source, fits and measured_ok, msg)


def manifest_budget(manifest: dict, bundle: Path) -> tuple[float, int]:
    """The budget (and its percentile) the bundle was compiled for.

    Raises:
        BadInputError: The bundle was compiled without a budget.
    """
    policy = manifest.get("policy") or {}
    budget = policy.get("budget_ms")
    if budget is None:
        raise BadInputError(
            f"Bundle {bundle} was compiled without a latency budget; give one with --budget-ms."
        )
    return float(budget), int(policy.get("percentile", 99))


def check_bundle(
    bundle: Path,
    budget_ms: float | None = None,
    percentile: int | None = None,
    require_measured: bool = False,
    junit: Path | None = None,
) -> GateResult:
    """Gate a bundle on its latency budget; optionally write a JUnit XML report.

    Args:
        bundle: The bundle directory.
        budget_ms: The budget; ``None`` uses the one in the bundle's manifest.
        percentile: The percentile gated; ``None`` is the manifest's when its budget is used,
            else 99.
        require_measured: Fail an estimated latency.
        junit: Also write the verdict as JUnit XML here.

    Raises:
        BadInputError: Not a bundle, a non-positive budget, an unknown percentile, or no budget
            given to a bundle compiled without one.
    """
    if budget_ms is not None and budget_ms <= 0:
        raise BadInputError(f"--budget-ms must be positive, got {budget_ms}.")
    if percentile is not None and percentile not in (50, 90, 99):
        raise BadInputError(f"--percentile must be 50, 90 or 99, got {percentile}.")
    manifest = read_manifest(bundle)
    source = "given"
    if budget_ms is None:
        budget_ms, compiled_at = manifest_budget(manifest, bundle)
        percentile, source = percentile or compiled_at, "manifest"
    percentile = percentile or 99
    total = pipeline_latency(manifest)
    checks = [
        _verdict(
            "pipeline", total.at(percentile), total.source, budget_ms, percentile, require_measured
        )
    ]
    for stage in manifest["stages"]:
        stats = LatencyStats.from_json(stage["latency_ms"])
        checks.append(
            _verdict(
                f"stage {stage['name']}",
                stats.at(percentile),
                stats.source,
                budget_ms,
                percentile,
                require_measured,
            )
        )
    result = GateResult(str(bundle), budget_ms, percentile, tuple(checks), source)
    if junit is not None:
        write_junit(result, junit)
    return result


def write_junit(result: GateResult, path: Path) -> None:
    """Write the gate as a JUnit XML test suite (the pipeline check decides the failure)."""
    suite = ET.Element(
        "testsuite",
        name="edgec.check",
        tests=str(len(result.checks)),
        failures=str(0 if result.passed else 1),
        errors="0",
    )
    for index, check in enumerate(result.checks):
        case = ET.SubElement(
            suite,
            "testcase",
            classname=f"edgec.latency.p{result.percentile}",
            name=check.name,
            time=f"{check.latency_ms / 1000:.6f}",
        )
        ET.SubElement(case, "system-out").text = check.message
        # Only the pipeline verdict fails the suite; stages are context.
        if index == 0 and not check.passed:
            ET.SubElement(case, "failure", message=check.message, type="LatencyBudgetExceeded")
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        ET.ElementTree(suite).write(path, encoding="utf-8", xml_declaration=True)
    except OSError as err:
        raise BadInputError(f"Cannot write the JUnit report {path}: {err.strerror}.") from None
