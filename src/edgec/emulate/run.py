"""``edgec run --emulate``: a bundle's own device runtime on an emulated Raspberry Pi CPU.

The bundle's generated ``runtime/device.py`` runs as it would on the board: under
``qemu-aarch64 -cpu cortex-a72`` (the Pi 4's core), with Debian's arm64 ``python3.11`` and the
real aarch64 wheels of what its device stages need (:mod:`edgec.emulate.sysroot` fetches them
once). No file of the host's Python reaches it: the interpreter, its standard library and every
wheel are aarch64 builds from the cache.

The runtime's ``--json`` lines come back as the same dicts a native ``edgec run`` yields, each
with ``"timing": "emulated"``: the latencies were measured under a CPU emulator and say nothing
about the board's speed; predictions, confidences, stages and routes are the device's own.

With a public key the bundle is verified on the host by edgec's own verifier before anything
runs (the sysroot has no ``cryptography``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

from edgec.bundle.launch import open_bundle
from edgec.emulate import bytecode, sysroot
from edgec.errors import BadInputError, GateFailedError
from edgec.runtime.render import RUNTIME_DIR

QEMU = "qemu-aarch64"
CPU = "cortex-a72"
TIMING = "emulated"
# The wheels a device stage's backend needs (numpy: always).
BACKEND_WHEELS = {
    "onnxruntime": ("onnxruntime",),
    "litert": ("ai-edge-litert",),
    "tflite": ("ai-edge-litert",),
    "edgetpu": ("ai-edge-litert",),  # without an Edge TPU: its plain .tflite on the CPU
    "tvm": ("apache-tvm", "apache-tvm-ffi", "typing-extensions", "ml-dtypes"),
}
_ARRAYS = (".npy", ".npz")
# What the runtime reads from the environment, passed on to it (nothing else of the host's).
_PASSED_ENV = ("EDGEC_DEVICE_ID", "EDGEC_POWER_STATE", "EDGEC_THREADS", "EDGEC_GATEWAY_URL")


def wheels_for(manifest: dict, inputs: list[Path]) -> list[str]:
    """The aarch64 wheels the device side of a bundle needs for ``inputs``.

    numpy always; each device stage's backend runtime (a ``.tflite`` artifact: ai-edge-litert,
    whatever the backend is called); Pillow when an input is an image.
    """
    names = ["numpy"]
    for stage in manifest.get("stages", []):
        if stage.get("tier", "device") != "device":
            continue
        backend = str(stage.get("backend", ""))
        if str(stage.get("artifact", "")).endswith(".tflite"):
            backend = "litert"
        names += [n for n in BACKEND_WHEELS.get(backend, ()) if n not in names]
    if any(Path(p).suffix.lower() not in _ARRAYS for p in inputs):
        names.append("pillow")
    return names


def find_qemu() -> str:
    """The ``qemu-aarch64`` on PATH.

    Raises:
        BadInputError: There is none.
    """
    qemu = shutil.which(QEMU)
    if qemu is None:
        raise BadInputError(
            f"--emulate needs {QEMU} on PATH (Debian/Ubuntu: apt-get install qemu-user); "
            "install it, or run the bundle natively without --emulate."
        )
    return qemu


def command(
    qemu: str, root: Path, inputs: list[Path], options: list[str], write_bytecode: bool = False
) -> list[str]:
    """The command line that runs the device runtime under qemu (in the bundle directory);
    ``write_bytecode``: Python writes it (into a pycache prefix: :mod:`.bytecode`)."""
    python = root / sysroot.PYTHON
    runtime = [*([] if write_bytecode else ["-B"]), "-s", "-m", f"{RUNTIME_DIR}.device"]
    return [qemu, "-cpu", CPU, "-L", str(root), str(python), *runtime, *map(str, inputs), *options]


def environment(root: Path, sites: list[Path]) -> dict[str, str]:
    """The runtime's environment: the sysroot's Python and wheels, nothing of the host's."""
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": os.environ.get("HOME", "/"),
        "LANG": "C.UTF-8",
        "PYTHONHOME": str(root / "usr"),
        "PYTHONPATH": os.pathsep.join(str(p) for p in sites),
        "PYTHONNOUSERSITE": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONIOENCODING": "utf-8",
    }
    env.update({k: os.environ[k] for k in _PASSED_ENV if k in os.environ})
    return env


def run_emulated(
    bundle: Path,
    inputs: list[Path],
    gateway_url: str | None = None,
    public_key: Path | None = None,
    device_id: str | None = None,
    capture: dict | None = None,
    power_state_file: Path | None = None,
    console=None,
) -> Iterator[dict]:
    """Answer every input frame with the bundle's device runtime under ``qemu-aarch64``.

    The same arguments and dicts as :func:`edgec.bundle.launch.run_bundle`, each dict with
    ``"timing": "emulated"`` added. The first run fetches the sysroot and the wheels (progress
    on ``console``, default stderr).

    Raises:
        BadInputError: No qemu, no network on the first run, a bad bundle or input, or the
            runtime failed under emulation.
        VerificationError: A public key is given and the bundle does not verify.
        GateFailedError: No frame got an answer.
    """
    if not inputs:
        raise BadInputError("Give at least one input: .npy/.npz arrays or images.")
    root, manifest, _ = open_bundle(bundle, public_key)
    device = root / RUNTIME_DIR / "device.py"
    if (root / RUNTIME_DIR).is_symlink() or not device.is_file() or device.is_symlink():
        raise BadInputError(
            f"Bundle {bundle} has no generated runtime ({RUNTIME_DIR}/device.py as a regular "
            "file); recompile it with this edgec."
        )
    paths = [Path(p).absolute() for p in inputs]
    for path in paths:
        if not path.is_file():
            raise BadInputError(f"Input {path} does not exist or is not a file.")
    qemu = find_qemu()
    try:
        system, sites = sysroot.Fetcher(console).ensure(wheels_for(manifest, paths))
    except sysroot.SetupError as err:
        raise BadInputError(str(err)) from None
    options = ["--json", "--quiet", *_runtime_options(gateway_url, capture, power_state_file)]
    env = environment(system, sites)
    if device_id:
        env["EDGEC_DEVICE_ID"] = device_id
    if not bytecode.pending([system, *sites]):
        yield from _stream(command(qemu, system, paths, options), root, env, gateway_url)
        return
    with bytecode.kept([system, *sites]) as prefix:  # its bytecode of the cache's files stays
        env["PYTHONPYCACHEPREFIX"] = str(prefix)
        env.pop("PYTHONDONTWRITEBYTECODE")
        argv = command(qemu, system, paths, options, write_bytecode=True)
        yield from _stream(argv, root, env, gateway_url)


def _runtime_options(gateway_url, capture, power_state_file) -> list[str]:
    options = ["--gateway", gateway_url] if gateway_url else []
    if capture:
        options += ["--capture", str(Path(capture["capture_dir"]).absolute())]
        options += ["--capture-max-frames", str(capture["capture_max_frames"])]
        options += ["--capture-max-mb", str(capture["capture_max_mb"])]
    if power_state_file is not None:
        options += ["--power-state-file", str(Path(power_state_file).absolute())]
    return options


def _stream(argv: list[str], cwd: Path, env: dict, gateway_url: str | None) -> Iterator[dict]:
    """Run ``argv``; yield its JSON lines as they come, labelled; its errors as edgec's."""
    process = subprocess.Popen(
        argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, encoding="utf-8", errors="replace",
    )  # fmt: skip
    errors: list[str] = []
    reader = threading.Thread(target=_relay, args=(process.stderr, errors), daemon=True)
    reader.start()
    try:
        for line in process.stdout:
            try:
                item = json.loads(line)
            except json.JSONDecodeError:
                continue  # not an answer line
            if isinstance(item, dict) and "prediction" in item:
                item["timing"] = TIMING
                yield item
        code = process.wait()
        reader.join()
    finally:
        if process.poll() is None:  # the caller stopped early: stop the runtime too
            process.kill()
            process.wait()
    if code == 0:
        return
    message = next((e[7:].strip() for e in reversed(errors) if e.startswith("error: ")), None)
    if code == 1 and message:
        where = f" (the gateway {gateway_url} never answered)" if gateway_url else ""
        raise GateFailedError(f"Under emulation, {message.rstrip('.')}{where}.")
    if message:
        raise BadInputError(f"Under emulation: {message.rstrip('.')}.")
    tail = errors[-1].strip() if errors else "no message"
    raise BadInputError(
        f"The bundle's device runtime failed under {QEMU} (exit {code}: {tail.rstrip('.')}); "
        "run it natively without --emulate to tell the bundle from the emulation."
    )


def _relay(stream, errors: list[str]) -> None:
    """Collect the runtime's stderr; pass its warnings on to ours as they come."""
    for line in stream:
        errors.append(line.rstrip("\n"))
        if line.startswith("warning:"):
            sys.stderr.write(line)
            sys.stderr.flush()
