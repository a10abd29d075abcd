"""Real signed bundles for the trust and install tests: the example teacher compiled for three
targets (estimated latency, so each compile takes well under a second) and one key pair.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgec.bundle import trust
from edgec.compiler import compile_model
from edgec.config import CompileConfig

REPO = Path(__file__).resolve().parents[2]
TEACHER = REPO / "examples" / "digits" / "teacher.onnx"
TARGETS = ("raspberry-pi-4", "raspberry-pi-5", "jetson-nano")


@dataclass(frozen=True)
class SignedBundles:
    """A key pair and bundles signed with it.

    Attributes:
        private: ``edgec.key``.
        public: ``edgec.pub``.
        bundles: One signed bundle per target in :data:`TARGETS`.
        unsigned: A bundle compiled without ``--sign-key``.
    """

    private: Path
    public: Path
    bundles: tuple[Path, ...]
    unsigned: Path


_CACHE: dict[str, SignedBundles] = {}


def make_signed_bundles(root: Path) -> SignedBundles:
    """Generate keys and compile the teacher into signed bundles under ``root``."""
    private, public = trust.generate_keys(root / "keys")
    # ONNX Runtime on every machine: the same bundles with or without TVM and the aarch64
    # cross toolchain (under auto, TVM would build the Jetson's stage when both are there).
    options = {"model": TEACHER, "students": "none", "precision": "fp32", "backend": "onnxruntime"}
    bundles = []
    for target in TARGETS:
        config = CompileConfig(target=target, output=root / target, sign_key=private, **options)
        bundles.append(compile_model(config).bundle)
    unsigned = compile_model(
        CompileConfig(target="coral-dev-board", output=root / "unsigned", **options)
    ).bundle
    return SignedBundles(private, public, tuple(bundles), unsigned)


def shared_signed_bundles(tmp_path_factory) -> SignedBundles:
    """:func:`make_signed_bundles` once per test session. Tests must not modify these bundles
    (copy one first)."""
    if "bundles" not in _CACHE:
        _CACHE["bundles"] = make_signed_bundles(tmp_path_factory.mktemp("signed"))
    return _CACHE["bundles"]
