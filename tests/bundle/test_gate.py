"""The latency gate: pass under budget, fail over it, JUnit that parses, measured vs estimated."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from edgec.bundle.gate import check_bundle
from edgec.compiler import compile_model
from edgec.config import CompileConfig
from edgec.errors import BadInputError


@pytest.fixture(scope="module")
def host_bundle(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("gate") / "host"
    teacher = Path(__file__).resolve().parents[2] / "examples/digits/teacher.onnx"
    compile_model(CompileConfig(model=teacher, target="host", output=out, measure_seconds=1.0))
    return out


def test_host_latency_is_measured(host_bundle):
    result = check_bundle(host_bundle, budget_ms=1000)
    assert result.passed
    assert result.checks[0].source == "measured-host"
    assert 0 < result.checks[0].latency_ms < 1000


def test_over_budget_fails_and_says_by_how_much(host_bundle):
    result = check_bundle(host_bundle, budget_ms=1e-6, percentile=90)
    assert not result.passed
    assert "exceeds the 1e-06 ms budget by" in result.summary
    assert "p90" in result.summary and "measured-host" in result.summary


def test_percentiles_are_ordered(host_bundle):
    lat = [check_bundle(host_bundle, 1000, p).checks[0].latency_ms for p in (50, 90, 99)]
    assert lat == sorted(lat)


def test_junit_report_parses_and_counts_the_failure(host_bundle, tmp_path):
    report = tmp_path / "reports" / "junit.xml"
    check_bundle(host_bundle, budget_ms=1e-6, junit=report)
    suite = ET.parse(report).getroot()
    assert suite.tag == "testsuite" and suite.get("failures") == "1"
    assert suite.find("testcase/failure") is not None
    check_bundle(host_bundle, budget_ms=1000, junit=report)
    assert ET.parse(report).getroot().get("failures") == "0"


def test_require_measured_fails_an_estimate(tmp_path, teacher_path):
    out = tmp_path / "rpi"
    compile_model(CompileConfig(model=teacher_path, target="raspberry-pi-4", output=out))
    assert check_bundle(out, budget_ms=1000).passed
    strict = check_bundle(out, budget_ms=1000, require_measured=True)
    assert not strict.passed and "estimated" in strict.summary


def test_bad_budget_is_bad_input(host_bundle):
    with pytest.raises(BadInputError):
        check_bundle(host_bundle, budget_ms=0)


@pytest.fixture(scope="module")
def budgeted_bundle(tmp_path_factory) -> Path:
    """A bundle compiled with a 5 ms budget at p90 (its manifest's policy records both)."""
    out = tmp_path_factory.mktemp("gate") / "budgeted"
    teacher = Path(__file__).resolve().parents[2] / "examples/digits/teacher.onnx"
    config = CompileConfig(
        model=teacher,
        target="raspberry-pi-4",
        output=out,
        budget_ms=5.0,
        percentile=90,
        students="none",
        precision="fp32",
    )
    compile_model(config)
    return out


def test_without_a_budget_the_gate_uses_the_manifests_and_says_so(budgeted_bundle):
    """Surprise 4: `edgec check BUNDLE` without --budget-ms gates on the compiled budget."""
    result = check_bundle(budgeted_bundle)
    assert (result.budget_ms, result.percentile, result.budget_source) == (5.0, 90, "manifest")
    assert result.passed and "within the 5 ms budget" in result.summary
    assert result.budget_note == "budget 5 ms at p90 from the bundle's manifest"
    assert result.to_json()["budget_source"] == "manifest"


def test_a_given_budget_wins_over_the_manifests(budgeted_bundle):
    result = check_bundle(budgeted_bundle, budget_ms=1e-6)
    assert not result.passed and result.budget_source == "given" and result.budget_note is None
    assert result.percentile == 99  # a given budget is gated at p99 unless told otherwise


def test_no_budget_anywhere_is_bad_input(host_bundle):
    """The host bundle was compiled without a budget: the gate asks for one."""
    with pytest.raises(BadInputError, match="compiled without a latency budget; give one with"):
        check_bundle(host_bundle)
