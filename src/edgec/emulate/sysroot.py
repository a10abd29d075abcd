"""The emulated device's files: a Debian arm64 sysroot and aarch64 wheels, fetched once.

Everything lies in one cache directory (``$EDGEC_EMULATE_CACHE``, default
``~/.cache/edgec/emulate``):

* ``debian-bookworm-arm64/``: Python 3.11 and the shared libraries it and the wheels load,
  unpacked from Debian bookworm's own arm64 packages (the release Raspberry Pi OS is built on,
  with the same Python), plus a ``/proc/cpuinfo`` and ``/sys/devices/system/cpu`` that describe
  a Raspberry Pi 4's four Cortex-A72 cores: qemu-user looks paths up in the sysroot first, and
  the CPU detection inside ONNX Runtime crashes on the host's x86 ``/proc/cpuinfo``.
* ``wheels/cp311-aarch64/NAME-VERSION/``: each aarch64 wheel unpacked on its own (numpy,
  onnxruntime, ai-edge-litert, Pillow, the TVM runtime), so a bundle that needs one more only
  fetches that one.

The packages come from ``$EDGEC_EMULATE_DEBIAN_MIRROR`` (default https://deb.debian.org/debian;
each ``.deb`` is checked against the SHA-256 the index gives), the wheels through pip (its own
configuration, or only ``$EDGEC_EMULATE_INDEX_URL`` when that is set). Each piece is built in a
temporary directory beside its place and renamed into it when complete, so an interrupted fetch
leaves nothing half-made behind, and two runs fetching at once both end with a whole copy.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path

from edgec.emulate import debian

CACHE_ENV = "EDGEC_EMULATE_CACHE"
MIRROR_ENV = "EDGEC_EMULATE_DEBIAN_MIRROR"
INDEX_ENV = "EDGEC_EMULATE_INDEX_URL"
DEFAULT_MIRROR = "https://deb.debian.org/debian"

RELEASE = "bookworm"
PYTHON_VERSION = "3.11"
PYTHON_TAG = "cp311"
# What a running python3.11 loads (libpython3.11-stdlib's dependencies: libssl, libffi, ...),
# and the C++ runtime the ONNX Runtime and LiteRT wheels link against.
ROOT_PACKAGES = ("python3.11-minimal", "libpython3.11-stdlib", "libstdc++6")
PYTHON = "usr/bin/python3.11"
# bookworm's glibc is 2.36: any manylinux wheel up to that runs on it.
PLATFORMS = (
    *(f"manylinux_2_{minor}_aarch64" for minor in range(36, 16, -1)),
    "manylinux2014_aarch64",
)

# The aarch64 wheels, at the versions edgec itself is tested with (constraints.txt).
WHEELS = {
    "numpy": "2.4.6",
    "onnxruntime": "1.31.1",
    "ai-edge-litert": "2.3.0",
    "pillow": "13.0.0",
    "apache-tvm": "0.27.0.post1",
    "apache-tvm-ffi": "0.1.14.post0",
    "typing-extensions": "4.16.0",
    "ml-dtypes": "0.6.0",
}
# Left out when unpacking: what a device never loads (TVM's 240 MB compiler library; the
# runtime loads TVM with TVM_USE_RUNTIME_LIB=1, and a Pi has no CUDA).
SKIPPED = {"apache-tvm": ("tvm/lib/libtvm_compiler.so", "tvm/lib/libtvm_runtime_cuda.so")}

# The Raspberry Pi 4's CPU (4 x Cortex-A72, ARMv8-A), as its /proc/cpuinfo says it.
CORES = 4
_CPUINFO_CORE = (
    "processor\t: {i}\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\n"
    "CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: 0xd08\n"
    "CPU revision\t: 3\n\n"
)
_CPUINFO_BOARD = "Hardware\t: BCM2835\nModel\t\t: Raspberry Pi 4 Model B\n"
MARKER = ".edgec-emulate.json"  # in a complete sysroot or wheel directory
_TIMEOUT_S = 60


class SetupError(RuntimeError):
    """The sysroot or a wheel cannot be fetched; the message is one sentence."""


def cache_dir() -> Path:
    """Where the sysroot and the wheels are kept."""
    override = os.environ.get(CACHE_ENV)
    return Path(override) if override else Path.home() / ".cache" / "edgec" / "emulate"


def mirror_url() -> str:
    """The Debian mirror the sysroot's packages come from."""
    return (os.environ.get(MIRROR_ENV) or DEFAULT_MIRROR).rstrip("/")


def sysroot_dir() -> Path:
    """The sysroot's place in the cache (present once fetched)."""
    return cache_dir() / f"debian-{RELEASE}-arm64"


def wheel_dir(name: str) -> Path:
    """Where the wheel ``name`` (a key of :data:`WHEELS`) is unpacked."""
    return cache_dir() / "wheels" / f"{PYTHON_TAG}-aarch64" / f"{name}-{WHEELS[name]}"


def is_ready(path: Path) -> bool:
    """Whether ``path`` (the sysroot or a wheel's directory) is complete."""
    return (path / MARKER).is_file()


class Fetcher:
    """Fetches what is missing from the cache, with one rich progress display on stderr.

    On a terminal, a bar per download (bytes) and one for the wheels; elsewhere (CI logs) one
    line when a piece starts and one when it is done.
    """

    def __init__(self, console=None):
        from rich.console import Console

        if console is None:  # like edgec's own: never hard-wrapped, even without a terminal
            console = Console(
                stderr=True, soft_wrap=True, width=None if sys.stderr.isatty() else 160
            )
        self.console = console
        self._progress = None

    @contextlib.contextmanager
    def _session(self) -> Iterator[None]:
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TimeRemainingColumn(),
            console=self.console,
            transient=True,
            disable=not self.console.is_terminal,
        )
        try:
            with self._progress:
                yield
        finally:
            self._progress = None

    def _say(self, text: str) -> None:
        self.console.print(text, highlight=False, markup=False)

    def ensure(self, wheels: list[str]) -> tuple[Path, list[Path]]:
        """The sysroot and the site directories of ``wheels``, fetched when missing.

        Raises:
            SetupError: Something missing cannot be fetched (no network, a bad mirror or
                index, a package or wheel that is not there).
        """
        root = sysroot_dir()
        missing = [name for name in wheels if not is_ready(wheel_dir(name))]
        if is_ready(root) and not missing:
            return root, [wheel_dir(name) for name in wheels]
        with self._session():
            if not is_ready(root):
                self._fetch_sysroot(root)
            for name in missing:
                self._fetch_wheel(name)
        return root, [wheel_dir(name) for name in wheels]

    # --- the Debian sysroot ---

    def _download(self, url: str, label: str | None = None, task=None) -> bytes:
        """``url``'s bytes; progress on ``task`` (bytes), else on a bar of its own."""
        try:
            with urllib.request.urlopen(url, timeout=_TIMEOUT_S) as response:
                own = task is None
                if own:
                    total = int(response.headers.get("Content-Length") or 0) or None
                    task = self._progress.add_task(label or url, total=total)
                chunks = []
                while chunk := response.read(1 << 16):
                    chunks.append(chunk)
                    self._progress.advance(task, len(chunk))
                if own:
                    self._progress.remove_task(task)
                return b"".join(chunks)
        except (urllib.error.URLError, OSError, ValueError) as err:
            reason = getattr(err, "reason", None) or err
            raise SetupError(
                f"Cannot download {url} ({reason}): the first `edgec run --emulate` fetches an "
                f"arm64 Python from a Debian mirror (${MIRROR_ENV}) and aarch64 wheels from "
                "the package index, so it needs network access once; afterwards it runs from "
                f"the cache {cache_dir()}."
            ) from None

    def _fetch_sysroot(self, root: Path) -> None:
        mirror = mirror_url()
        index_url = f"{mirror}/dists/{RELEASE}/main/binary-arm64/Packages.xz"
        try:
            index = debian.read_index(self._download(index_url, "Debian package index"))
            packages = debian.closure(index, ROOT_PACKAGES)
        except debian.DebianError as err:
            raise SetupError(f"The Debian mirror {mirror} is not usable: {err}.") from None
        total = sum(p.size for p in packages)
        self._say(
            f"Fetching {len(packages)} Debian {RELEASE} arm64 packages ({total / 1e6:.1f} MB: "
            f"Python {PYTHON_VERSION} and the libraries it loads) into {root}"
        )
        with _building(root) as work:
            task = self._progress.add_task(f"{len(packages)} Debian packages", total=total)
            for package in packages:
                data = self._download(f"{mirror}/{package.filename}", task=task)
                if hashlib.sha256(data).hexdigest() != package.sha256:
                    raise SetupError(
                        f"{package.filename} from {mirror} does not match the SHA-256 of the "
                        "package index; try again, or set "
                        f"${MIRROR_ENV} to another Debian mirror."
                    )
                try:
                    debian.extract_deb(data, work)
                except debian.DebianError as err:
                    raise SetupError(f"Cannot unpack {package.filename}: {err}.") from None
            self._progress.remove_task(task)
            _describe_cpu(work)
            _mark(work, {p.name: p.version for p in packages})
        self._say(f"Fetched {len(packages)} Debian packages")

    # --- the wheels ---

    def _fetch_wheel(self, name: str) -> None:
        version = WHEELS[name]
        task = self._progress.add_task(f"wheel {name} {version} (aarch64)", total=None)
        self._say(f"Fetching the aarch64 wheel {name}=={version}")
        with tempfile.TemporaryDirectory(prefix="edgec-wheel-") as download:
            _pip_download(name, version, Path(download))
            wheel = next(Path(download).glob("*.whl"))
            size = wheel.stat().st_size
            with _building(wheel_dir(name)) as work:
                _unpack_wheel(wheel, work, SKIPPED.get(name, ()))
                _mark(work, {name: version, "wheel": wheel.name})
        self._progress.remove_task(task)
        self._say(f"Fetched {wheel.name} ({size / 1e6:.1f} MB)")


def _pip_download(name: str, version: str, dest: Path) -> None:
    """``pip download`` the aarch64 wheel of ``name==version`` for the sysroot's Python."""
    # -vv: pip names a connection error only in its verbose log (it then says "no matching
    # distribution"); _pip_failure() reads the reason from it.
    command = [sys.executable, "-m", "pip", "download", "-vv", "--no-deps"]
    command += ["--disable-pip-version-check", "--only-binary=:all:", "--dest", str(dest)]
    command += ["--python-version", PYTHON_VERSION, "--implementation", "cp"]
    command += ["--abi", PYTHON_TAG, "--abi", "abi3", "--abi", "none"]
    for platform in PLATFORMS:
        command += ["--platform", platform]
    index = os.environ.get(INDEX_ENV)
    if index:  # that index alone: no configured mirrors, extra indexes or local wheels
        command += ["--isolated", "--index-url", index, "--retries", "0", "--timeout", "15"]
    command.append(f"{name}=={version}")
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if "No module named pip" in result.stderr:
        raise SetupError(
            f"`edgec run --emulate` fetches its aarch64 wheels with pip, which {sys.executable} "
            "lacks; install pip into edgec's environment."
        )
    if result.returncode != 0 or not any(dest.glob("*.whl")):
        where = index or "pip's configured package index"
        raise SetupError(
            f"Cannot fetch the aarch64 wheel {name}=={version} from {where} "
            f"({_pip_failure(result.stderr + result.stdout)}): the first `edgec run --emulate` "
            f"needs network access to the package index (or set ${INDEX_ENV}); afterwards it "
            f"runs from the cache {cache_dir()}."
        )


def _pip_failure(log: str) -> str:
    """Why ``pip download`` failed, in a few words, from its ``-vv`` log."""
    fetch = re.search(r"Could not fetch URL (\S+?):? (.*?) - skipping", log)
    if fetch:
        errno = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", fetch.group(2))
        return f"cannot reach {fetch.group(1)}: {errno.group(1) if errno else 'connection error'}"
    if "is not a trusted or secure host" in log:
        return "pip ignores a plain-http index on a host it does not trust; use https"
    errors = [line for line in log.splitlines() if line.startswith("ERROR: ")]
    return errors[-1].removeprefix("ERROR: ").rstrip(".") if errors else "pip failed"


def _unpack_wheel(wheel: Path, dest: Path, skipped: tuple[str, ...] = ()) -> None:
    """Unpack a wheel as an installer would put it in ``site-packages`` (no scripts), all but
    the files ``skipped`` names."""
    with zipfile.ZipFile(wheel) as archive:
        for info in archive.infolist():
            parts = Path(info.filename).parts
            if info.is_dir() or ".." in parts or not parts or info.filename in skipped:
                continue
            if parts[0].endswith(".data"):
                if len(parts) < 3 or parts[1] not in ("purelib", "platlib"):
                    continue  # scripts, headers, data: nothing the runtime imports
                parts = parts[2:]
            target = dest.joinpath(*parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(info) as stream:
                target.write_bytes(stream.read())


def _describe_cpu(root: Path) -> None:
    """A Raspberry Pi 4's ``/proc/cpuinfo`` and CPU list in the sysroot (see the module)."""
    (root / "proc").mkdir(exist_ok=True)
    cpuinfo = "".join(_CPUINFO_CORE.format(i=i) for i in range(CORES)) + _CPUINFO_BOARD
    (root / "proc" / "cpuinfo").write_text(cpuinfo, encoding="ascii")
    cpus = root / "sys" / "devices" / "system" / "cpu"
    cpus.mkdir(parents=True, exist_ok=True)
    for name in ("possible", "present", "online"):
        (cpus / name).write_text(f"0-{CORES - 1}\n", encoding="ascii")


def _mark(work: Path, contents: dict) -> None:
    (work / MARKER).write_text(json.dumps(contents, indent=1, sort_keys=True), encoding="utf-8")


@contextlib.contextmanager
def _building(final: Path) -> Iterator[Path]:
    """A temporary directory beside ``final``, renamed into place when the block completes
    and removed when it fails; a copy another run completed meanwhile is kept."""
    final.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        yield work
        if final.exists() and not is_ready(final):
            shutil.rmtree(final)  # an incomplete copy from an older edgec
        try:
            work.rename(final)
        except OSError:
            if not is_ready(final):
                raise
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    """``python -m edgec.emulate.sysroot [WHEEL...]``: fetch the sysroot and those wheels
    (default numpy, onnxruntime, ai-edge-litert) into the cache; ``make test`` runs it, so the
    emulation tests find everything cached. Exit 2, with the reason, when that fails."""
    names = (sys.argv[1:] if argv is None else argv) or ["numpy", "onnxruntime", "ai-edge-litert"]
    unknown = [n for n in names if n not in WHEELS]
    if unknown:
        known = ", ".join(WHEELS)
        print(f"error: no pinned aarch64 wheel {unknown[0]}; known: {known}.", file=sys.stderr)
        return 2
    try:
        Fetcher().ensure(names)
    except SetupError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
