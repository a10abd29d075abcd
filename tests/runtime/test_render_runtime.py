"""The runtime renderer: golden files, ruff on the rendered code, StrictUndefined, literals.

Two fixed manifests (``golden/*_manifest.json``) are rendered: a three-stage cascade with a
gateway, and a single teacher on the device. Every templated file must equal its golden copy
(``golden/<case>/<path>.golden``); the shared modules must be verbatim copies of their sources.
After a deliberate template change, regenerate the golden files with
``EDGEC_UPDATE_GOLDEN=1 pytest tests/runtime/test_render_runtime.py`` and review the diff.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jinja2
import pytest
import yaml

from edgec.runtime import render

GOLDEN = Path(__file__).parent / "golden"
REPO = Path(__file__).resolve().parents[2]
CASES = ("cascade", "single", "partition", "split")
UPDATE = os.environ.get("EDGEC_UPDATE_GOLDEN") == "1"


def _manifest(case: str) -> dict:
    return json.loads((GOLDEN / f"{case}_manifest.json").read_text())


@pytest.mark.parametrize("case", CASES)
def test_rendered_files_match_the_golden_files(case):
    """Each templated file equals its golden copy; shared modules are copied verbatim."""
    files = render.render_files(_manifest(case))
    templated = {k: v for k, v in files.items() if k not in render.SHARED_MODULES}
    golden_dir = GOLDEN / case
    if UPDATE:
        shutil.rmtree(golden_dir, ignore_errors=True)
        for rel, text in templated.items():
            path = golden_dir / f"{rel}.golden"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    expected = {
        p.relative_to(golden_dir).as_posix().removesuffix(".golden"): p.read_text()
        for p in golden_dir.rglob("*.golden")
    }
    assert sorted(templated) == sorted(expected)
    for rel, text in templated.items():
        assert text == expected[rel], f"{rel} differs from its golden file"
    source = Path(render.__file__).parent
    for module in render.SHARED_MODULES:
        assert files[module] == (source / module).read_text()


def test_a_cascade_gets_the_gateway_and_deployment_files_and_a_single_stage_does_not():
    """Gateway server, Dockerfile, Kubernetes and Triton files exist only with gateway stages."""
    cascade = set(render.render_files(_manifest("cascade")))
    single = set(render.render_files(_manifest("single")))
    gateway_files = {
        "gateway.py",
        "deploy/Dockerfile",
        "deploy/k8s/gateway.yaml",
        "deploy/triton/teacher/config.pbtxt",
    }
    assert gateway_files <= cascade
    assert not gateway_files & single
    assert {"device.py", "bundle_config.py", "requirements.txt", "README.md"} <= single


def test_rendering_is_deterministic():
    """The same manifest renders byte-identical files (bundles are reproducible)."""
    manifest = _manifest("cascade")
    assert render.render_files(manifest) == render.render_files(json.loads(json.dumps(manifest)))


@pytest.mark.parametrize("case", CASES)
def test_rendered_python_passes_ruff(case, tmp_path):
    """ruff check and ruff format --check, with the project's settings, on the runtime."""
    # ruff comes with the dev extra, next to this interpreter (CI does not activate the venv).
    beside = Path(sys.executable).with_name("ruff")
    ruff = str(beside) if beside.is_file() else shutil.which("ruff")
    assert ruff, "ruff (the dev extra) is needed to check the rendered runtime"
    render.render_runtime(tmp_path, _manifest(case))
    config = ["--config", str(REPO / "pyproject.toml"), "--no-cache"]
    target = str(tmp_path / render.RUNTIME_DIR)
    check = subprocess.run([ruff, "check", *config, target], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    fmt = subprocess.run(
        [ruff, "format", "--check", "--diff", *config, target], capture_output=True, text=True
    )
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr


def test_rendered_deployment_files_parse():
    """The Kubernetes file holds a Deployment, a Service and an HPA on the offload metrics;
    the Triton config names the stage's input and output with Triton types."""
    files = render.render_files(_manifest("cascade"))
    docs = list(yaml.safe_load_all(files["deploy/k8s/gateway.yaml"]))
    assert [d["kind"] for d in docs] == ["Deployment", "Service", "HorizontalPodAutoscaler"]
    hpa = docs[2]["spec"]
    assert hpa["scaleTargetRef"]["name"] == docs[0]["metadata"]["name"]
    assert {m["pods"]["metric"]["name"] for m in hpa["metrics"]} == {
        "gateway_queue_depth",
        "gateway_inflight",
    }
    probe = docs[0]["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]
    assert probe["httpGet"]["path"] == "/healthz"
    triton = files["deploy/triton/teacher/config.pbtxt"]
    for line in ('name: "teacher"', 'backend: "onnxruntime"', 'name: "x"', "TYPE_FP32"):
        assert line in triton
    assert "dims: [ 1, 1, 8, 8 ]" in triton and "dims: [ 1, 10 ]" in triton


def test_bundle_config_holds_the_manifest_policy():
    """The generated constants carry the manifest's thresholds, costs and policy exactly."""
    manifest = _manifest("cascade")
    source = render.render_files(manifest)["bundle_config.py"]
    namespace: dict = {}
    exec(compile(source, "bundle_config.py", "exec"), namespace)
    policy = manifest["policy"]
    for stage in namespace["STAGES"][:-1]:
        assert stage["threshold"] == policy["thresholds"][stage["name"]]
        assert stage["forward_cost_ms"] == policy["forward_cost_ms"][stage["name"]]
    assert namespace["POLICY"]["budget_ms"] == policy["budget_ms"]
    assert namespace["INPUT"]["shape"] == (1, 1, 8, 8)
    assert namespace["CLASSES"] == 10


def test_a_missing_manifest_value_is_an_error_not_an_empty_string():
    """StrictUndefined: a template that reads a missing value fails to render."""
    manifest = _manifest("cascade")
    context = render.runtime_context(manifest)
    del context["gateway"]
    with pytest.raises(jinja2.UndefinedError):
        render._environment().get_template("gateway.py.j2").render(**context)
    broken = json.loads(json.dumps(manifest))
    del broken["stages"][0]["artifact"]
    with pytest.raises(KeyError):
        render.render_files(broken)


@pytest.mark.parametrize(
    "value",
    [
        {"a": 1, "b": [1.5, None, True], "c": {"d": "x\"y'z"}},
        (1,),
        ("a" * 120,),
        {"long": list(range(60))},
        [],
        {},
    ],
)
def test_py_literal_round_trips(value):
    """Rendered literals evaluate back to the same value (tuples stay tuples)."""
    text = render.py_literal(value)
    assert ast.literal_eval(text) == value
    assert all(len(line) <= 100 for line in text.splitlines() if '"aaaa' not in line)


def test_rendered_runtime_imports_without_edgec(tmp_path):
    """The generated package imports no edgec module (a device has no edgec)."""
    render.render_runtime(tmp_path, _manifest("cascade"))
    code = (
        "import sys, runtime.device, runtime.gateway\n"
        "found = [m for m in sys.modules if m == 'edgec' or m.startswith('edgec.')]\n"
        "assert not found, found\n"
        "print(runtime.device.LAST_STAGE)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "teacher"


def test_a_stage_with_a_batch_dimension_gets_a_batching_triton_config():
    """A gateway stage checked at batch 16: Triton batches up to the gateway's max batch with
    its wait as the queue delay, and the dims leave the batch out; the runtime's stage record
    carries the batch it takes (a batch-1 stage keeps max_batch_size 0, see above)."""
    manifest = _manifest("cascade")
    for stage in manifest["stages"]:
        if stage["tier"] == "gateway":
            stage["batching"] = {"max_batch": 16}
    files = render.render_files(manifest)
    triton = files["deploy/triton/teacher/config.pbtxt"]
    assert f"max_batch_size: {render.GATEWAY_DEFAULTS['max_batch']}" in triton
    delay = round(render.GATEWAY_DEFAULTS["batch_wait_ms"] * 1000)
    assert f"max_queue_delay_microseconds: {delay}" in triton
    assert "dims: [ 1, 8, 8 ]" in triton and "dims: [ 10 ]" in triton
    namespace: dict = {}
    exec(compile(files["bundle_config.py"], "bundle_config.py", "exec"), namespace)
    assert [s["max_batch"] for s in namespace["STAGES"]] == [1, 1, 16]
