"""Render a bundle's ``runtime/``: the device runtime, the gateway server and deployment files.

:func:`render_runtime` is what the compile driver calls, inside the staging directory and
before the manifest is written, so every generated file is hashed (and signed) with the rest.
Templates live in ``templates/`` and are rendered with jinja2 and ``StrictUndefined``: a
missing value is an error, never an empty string. The modules the runtime shares with the
compiler (:data:`SHARED_MODULES`: the wire format, the scoring arithmetic, input reading,
metrics, stage loaders, bundle verification, drift binning, frame capture, request batching
and tracing) are copied verbatim, so the planner and the runtime compute with the same code.

Rendering is deterministic: the same manifest gives byte-identical files. The rendered Python
is formatted the way ``ruff format`` would and passes ``ruff check`` (tested).
"""

from __future__ import annotations

import json
import math
import re
from importlib import resources
from pathlib import Path

import jinja2

from edgec.runtime import batcher, codec

RUNTIME_DIR = "runtime"
SHARED_MODULES = (
    "codec.py",
    "scoring.py",
    "inputs.py",
    "observability.py",
    "loaders.py",
    "verify_bundle.py",
    "drift.py",
    "capture.py",
    "switching.py",
    "batcher.py",
    "tracing.py",
)
TEMPLATES = {
    "__init__.py": "init.py.j2",
    "bundle_config.py": "bundle_config.py.j2",
    "device.py": "device.py.j2",
    "requirements.txt": "requirements.txt.j2",
    "README.md": "README.md.j2",
}
GATEWAY_TEMPLATES = {
    "gateway.py": "gateway.py.j2",
    "deploy/k8s/gateway.yaml": "k8s_gateway.yaml.j2",
    "deploy/Dockerfile": "Dockerfile.j2",
}
GATEWAY_DEFAULTS = {
    "port": 8080,
    "queue_size": 16,
    "workers": 2,
    "max_connections": 64,
    "request_timeout_s": 10.0,
    "max_batch": batcher.DEFAULT_MAX_BATCH,
    "batch_wait_ms": batcher.DEFAULT_WAIT_MS,
}
DEFAULT_GATEWAY_TIMEOUT_MS = 1000.0
RETRY_AFTER_S = 1.0
_LINE = 100
_BACKEND_REQUIREMENTS = {
    "onnxruntime": "onnxruntime>=1.20",
    "tvm": "apache-tvm==0.27.0.post1  # only the runtime library is used (TVM_USE_RUNTIME_LIB=1)",
    "litert": "ai-edge-litert==2.3.0  # or tflite-runtime: the loader takes whichever is installed",
    "edgetpu": "ai-edge-litert==2.3.0  # or tflite-runtime; plus libedgetpu1-std (Coral apt) for "
    "model_edgetpu.tflite",
}
_TRITON_TYPES = {
    "float32": "TYPE_FP32",
    "float16": "TYPE_FP16",
    "float64": "TYPE_FP64",
    "uint8": "TYPE_UINT8",
    "int8": "TYPE_INT8",
    "int32": "TYPE_INT32",
    "int64": "TYPE_INT64",
    "bool": "TYPE_BOOL",
}


def py_literal(value, indent: int = 0, prefix: int = 0) -> str:
    """``value`` (JSON-like data, tuples allowed) as Python source in ``ruff format`` style.

    Collections of scalars stay on one line when it fits in 100 columns (``prefix`` is what
    precedes the value on its line); anything else is exploded one item per line with a
    trailing comma, which ``ruff format`` keeps as it is.
    """
    if isinstance(value, dict | list | tuple):
        return _collection(value, indent, prefix)
    return _scalar(value)


def _scalar(value) -> str:
    if value is None or isinstance(value, bool):
        return repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"cannot render the non-finite number {value}")
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    raise TypeError(f"cannot render {type(value).__name__} as a Python literal")


def _collection(value, indent: int, prefix: int) -> str:
    is_dict = isinstance(value, dict)
    if is_dict:
        opening, closing = "{", "}"
    elif isinstance(value, list):
        opening, closing = "[", "]"
    else:
        opening, closing = "(", ")"
    if not value:
        return opening + closing
    items = list(value.items()) if is_dict else list(value)
    values = [v for _, v in items] if is_dict else items
    if not any(isinstance(v, dict | list | tuple) for v in values):
        if is_dict:
            parts = [f"{json.dumps(k)}: {_scalar(v)}" for k, v in items]
        else:
            parts = [_scalar(v) for v in items]
        tail = "," if isinstance(value, tuple) and len(items) == 1 else ""
        inline = opening + ", ".join(parts) + tail + closing
        if prefix + len(inline) + 1 <= _LINE:
            return inline
    pad = " " * (indent + 4)
    lines = []
    for item in items:
        if is_dict:
            key, val = item
            head = f"{json.dumps(key)}: "
            lines.append(pad + head + py_literal(val, indent + 4, len(pad) + len(head)) + ",")
        else:
            lines.append(pad + py_literal(item, indent + 4, len(pad)) + ",")
    return opening + "\n" + "\n".join(lines) + "\n" + " " * indent + closing


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("edgec.runtime", "templates"),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )
    env.filters["py"] = py_literal
    env.filters["json"] = json.dumps
    return env


def _stage_record(stage: dict, policy: dict) -> dict:
    name = stage["name"]
    return {
        "name": name,
        "tier": stage["tier"],
        "role": stage["role"],
        "backend": stage["backend"],
        "artifact": stage["artifact"],
        "model": stage["model"],
        "precision": stage["precision"],
        "options": {
            k: v
            for k, v in (stage.get("backend_options") or {}).items()
            # Scalars, and the ONNX Runtime providers to try (a list of {name, options}).
            if v is None or isinstance(v, str | int | float | bool) or k == "execution_providers"
        },
        "scores": (policy.get("scores") or {}).get(name, "auto"),
        "threshold": (policy.get("thresholds") or {}).get(name),
        "forward_cost_ms": (policy.get("forward_cost_ms") or {}).get(name),
        # Most rows the stage was checked to take at once (a dynamic batch dimension).
        "max_batch": (stage.get("batching") or {}).get("max_batch", 1),
    }


def _wire(manifest: dict, shape: list[int], dtype: str) -> dict:
    """What a request to the gateway carries: the input, or a partition's intermediate tensor
    (``name`` is the tensor the gateway's first stage takes)."""
    partition = manifest.get("partition") or {}
    first_input = manifest["inputs"][0]
    wire = {"name": first_input["name"], "shape": tuple(shape), "dtype": dtype}
    if partition.get("prefix"):
        wire = {
            "name": partition["tensor"],
            "shape": tuple(partition["shape"]),
            "dtype": partition["dtype"],
        }
    # Device-only partitions send nothing ("none"); everything else goes raw unless encoded.
    encoding = "int8" if partition.get("encoding") == "int8" else "raw"
    return {**wire, "encoding": encoding}


def runtime_context(manifest: dict) -> dict:
    """The values the templates see, taken from a manifest (its ``files`` are not needed)."""
    policy = manifest["policy"]
    stages = [_stage_record(s, policy) for s in manifest["stages"]]
    prefix = next((s for s in stages if s["role"] == "prefix"), None)
    device = [s for s in stages if s["tier"] == "device" and s["role"] != "prefix"]
    gateway = [s for s in stages if s["tier"] == "gateway"]
    first_input = manifest["inputs"][0]
    output = manifest["outputs"][0]
    shape = [int(d) for d in first_input["shape"]]
    classes = output["shape"][-1] if output.get("shape") and output["shape"][-1] else None
    input_bytes = codec.body_bytes(shape, first_input["dtype"])
    wire = _wire(manifest, shape, first_input["dtype"])
    wire_bytes = codec.body_bytes(wire["shape"], wire["dtype"], wire["encoding"])
    backends = sorted({s["backend"] for s in stages})
    return {
        "edgec_version": manifest["edgec_version"],
        "source": manifest["source"],
        "target": manifest["target"],
        "input": {
            "name": first_input["name"],
            "shape": tuple(shape),
            "dtype": first_input["dtype"],
            "layout": first_input.get("layout"),
            "preprocess": first_input.get("preprocess"),
        },
        "output": {
            "name": output["name"],
            "shape": tuple(output.get("shape") or ()),
            "dtype": output["dtype"],
        },
        "classes": classes,
        "input_bytes": input_bytes,
        "stages": tuple(stages),
        "device_stages": device,
        "gateway_stages": gateway,
        "prefix_stage": prefix,
        "wire": wire,
        "wire_bytes": wire_bytes,
        "backends": backends,
        "requirements": [
            _BACKEND_REQUIREMENTS.get(b, f"# {b}: no runtime loader") for b in backends
        ],
        "policy": {
            "budget_ms": policy.get("budget_ms"),
            "percentile": policy.get("percentile", 99),
            "confidence": policy.get("confidence", "max-prob"),
            "fusion": policy.get("fusion", "replace"),
            "fusion_weight": policy.get("fusion_weight"),
            "gateway_timeout_ms": DEFAULT_GATEWAY_TIMEOUT_MS,
            "fallback_margin_ms": (policy.get("link") or {}).get("fallback_margin_ms", 1.0),
            "retry_after_s": RETRY_AFTER_S,
        },
        "summary": {
            "expected_accuracy": policy.get("expected_accuracy"),
            "expected_latency_ms": policy.get("expected_latency_ms"),
            "offload_rate": policy.get("offload_rate"),
            "accuracy_basis": policy.get("accuracy_basis", "labels"),
        },
        "gateway": {**GATEWAY_DEFAULTS, "max_request_bytes": wire_bytes},
        "switching": _switching(policy, device, gateway),
        "monitoring": _monitoring(manifest),
        "triton_types": _TRITON_TYPES,
        "triton_output_dims": [d if d else -1 for d in output.get("shape") or ()],
        "deploy_name": _dns_name(f"edgec-{Path(manifest['source']['path']).stem}"),
    }


def _switching(policy: dict, device: list[dict], gateway: list[dict]) -> dict:
    """The policies the device runtime switches between (``runtime.switching``): the
    top-level policy as ``link-good``, then the manifest's ``policy.alternatives``."""
    keys = ("stages", "offload", "thresholds", "forward_cost_ms", "fusion_weight")
    policies = {
        "link-good": {
            "stages": [s["name"] for s in device + gateway],
            "offload": bool(gateway),
            "thresholds": dict(policy.get("thresholds") or {}),
            "forward_cost_ms": dict(policy.get("forward_cost_ms") or {}),
            "fusion_weight": policy.get("fusion_weight"),
        }
    }
    for name, alternative in sorted((policy.get("alternatives") or {}).items()):
        policies[name] = {key: alternative.get(key) for key in keys}
    link = policy.get("link") or {}
    # A health probe is a small request: the plan prices it at the RTT plus the overhead.
    planned = link["rtt_ms"] + link.get("overhead_ms", 0.0) if link.get("rtt_ms") else None
    return {"planned_rtt_ms": planned, "policies": policies}


def _monitoring(manifest: dict) -> dict:
    """The drift reference and capture threshold (none for a manifest without them)."""
    monitoring = manifest.get("monitoring") or {}
    return {
        "drift": monitoring.get("drift"),
        "capture": {"threshold": (monitoring.get("capture") or {}).get("threshold")},
    }


def _dns_name(text: str) -> str:
    """A Kubernetes object name (RFC 1123 label) from ``text``."""
    name = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")[:63].strip("-")
    return name or "edgec-gateway"


def render_files(manifest: dict) -> dict[str, str]:
    """Every generated file as ``{path under runtime/: text}`` (templates and shared modules)."""
    env = _environment()
    context = runtime_context(manifest)
    files = {name: env.get_template(t).render(**context) for name, t in TEMPLATES.items()}
    for module in SHARED_MODULES:
        files[module] = (resources.files("edgec.runtime") / module).read_text()
    if context["gateway_stages"]:
        for name, template in GATEWAY_TEMPLATES.items():
            files[name] = env.get_template(template).render(**context)
        triton = env.get_template("triton_config.pbtxt.j2")
        for stage in context["gateway_stages"]:
            path = f"deploy/triton/{stage['name']}/config.pbtxt"
            files[path] = triton.render(stage=stage, **context)
    return dict(sorted(files.items()))


def render_runtime(root: Path, manifest: dict) -> list[Path]:
    """Write the generated runtime into ``root/runtime/``; return the files written."""
    written = []
    for rel, text in render_files(manifest).items():
        path = root / RUNTIME_DIR / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        written.append(path)
    return written
