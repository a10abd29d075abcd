"""Signing and verifying bundles with ed25519 keys (``edgec keygen``, ``sign``, ``verify``).

The signature covers ``manifest.json``, which lists every other file's sha256 and size, so one
signature pins the whole bundle. The checks themselves live in
:mod:`edgec.runtime.verify_bundle`, a standalone module (stdlib + ``cryptography``) that
the generated runtime ships; this module adds key files, clear errors and exit codes around it.

Keys are PEM files: ``edgec.key`` (PKCS#8, unencrypted, created with mode 0600) and
``edgec.pub`` (SubjectPublicKeyInfo). ``manifest.sig`` is the raw 64-byte signature.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edgec.errors import BadInputError, VerificationError
from edgec.runtime import verify_bundle as _verify

logger = logging.getLogger(__name__)

PRIVATE_KEY_NAME = "edgec.key"
PUBLIC_KEY_NAME = "edgec.pub"
SIGNATURE = _verify.SIGNATURE


@dataclass(frozen=True)
class VerifyResult:
    """The verdict over one bundle.

    Attributes:
        bundle: The bundle checked.
        valid: Whether it verifies.
        problems: Every reason it does not (empty when valid).
        manifest_sha256: sha256 of ``manifest.json`` (the version id), when it exists.
        key_id: The public key's id when a key was given (the signature was checked).
    """

    bundle: str
    valid: bool
    problems: tuple[str, ...] = field(default_factory=tuple)
    manifest_sha256: str | None = None
    key_id: str | None = None

    @property
    def summary(self) -> str:
        """One line for people."""
        if not self.valid:
            return f"{self.bundle} does not verify: " + "; ".join(self.problems)
        what = f"signed by key {self.key_id}" if self.key_id else "signature not checked (no key)"
        return f"{self.bundle} verifies: every file matches manifest {self.manifest_sha256}, {what}"

    def to_json(self) -> dict:
        """Machine-readable form for ``--json``."""
        return {
            "bundle": self.bundle,
            "valid": self.valid,
            "signature_checked": self.key_id is not None,
            "key_id": self.key_id,
            "manifest_sha256": self.manifest_sha256,
            "problems": list(self.problems),
        }


def key_id(public_key: Ed25519PublicKey) -> str:
    """A short id of a public key: the first 16 hex digits of the sha256 of its raw bytes."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def generate_keys(directory: Path, force: bool = False) -> tuple[Path, Path]:
    """Write a new key pair: ``directory/edgec.key`` (mode 0600) and ``directory/edgec.pub``.

    Raises:
        BadInputError: A key already exists there (without ``force``) or the directory cannot
            be written.
    """
    directory = Path(directory)
    private_path, public_path = directory / PRIVATE_KEY_NAME, directory / PUBLIC_KEY_NAME
    existing = [p for p in (private_path, public_path) if p.exists() or p.is_symlink()]
    if existing and not force:
        raise BadInputError(
            f"{existing[0]} already exists; pass --force to replace the key pair (bundles "
            "signed with the old key will no longer verify with the new one)."
        )
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    try:
        directory.mkdir(parents=True, exist_ok=True)
        write_atomic(private_path, private_pem, mode=0o600)
        write_atomic(public_path, public_pem, mode=0o644)
    except OSError as err:
        raise BadInputError(f"Cannot write keys into {directory}: {err.strerror}.") from None
    return private_path, public_path


def write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to ``path`` via a temporary file created with ``mode`` and a rename."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)  # before any byte is written: a private key is never readable
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read_key_file(path: Path, what: str) -> bytes:
    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"{what} {path} does not exist or is not a file.")
    try:
        return path.read_bytes()
    except OSError as err:
        raise BadInputError(f"Cannot read {what} {path}: {err.strerror}.") from None


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """Load ``edgec.key``.

    Raises:
        BadInputError: Missing, unreadable, a public key, or not an unencrypted ed25519 key.
    """
    data = _read_key_file(path, "Signing key")
    if b"PUBLIC KEY" in data:
        raise BadInputError(
            f"{path} is a public key; signing needs the private key ({PRIVATE_KEY_NAME})."
        )
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise BadInputError(
            f"{path} is not an unencrypted PEM private key; create one with `edgec keygen DIR`."
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise BadInputError(
            f"{path} is a {type(key).__name__}; edgec signs with ed25519 keys (`edgec keygen`)."
        )
    if os.stat(path).st_mode & 0o077:
        logger.warning("Signing key %s is readable by other users; chmod 600 it.", path)
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    """Load ``edgec.pub`` (PEM, or the raw 32-byte key).

    Raises:
        BadInputError: Missing, unreadable, a private key, or not an ed25519 public key.
    """
    data = _read_key_file(path, "Public key")
    if b"PRIVATE KEY" in data:
        raise BadInputError(
            f"{path} is a private key; verify with the public key ({PUBLIC_KEY_NAME}) and keep "
            "the private key off devices."
        )
    try:
        return _verify.load_public_key(data)
    except ValueError as err:
        raise BadInputError(
            f"{path} is not an ed25519 public key ({err}); use the {PUBLIC_KEY_NAME} that "
            "`edgec keygen` wrote."
        ) from None


def as_public_key(key: Ed25519PublicKey | Path | None) -> Ed25519PublicKey | None:
    """A public key given as a key or a key file (``None`` stays ``None``)."""
    if key is None or isinstance(key, Ed25519PublicKey):
        return key
    return load_public_key(Path(key))


def verify_bundle(bundle: Path, public_key: Ed25519PublicKey | Path | None = None) -> VerifyResult:
    """Verify a bundle: the signature (when a key is given), every file, no unlisted file.

    Args:
        bundle: The bundle directory.
        public_key: The public key (or its file); ``None`` checks integrity only.

    Raises:
        BadInputError: The bundle directory does not exist or the key file is unusable.
    """
    bundle = Path(bundle)
    key = as_public_key(public_key)
    if not bundle.is_dir():
        raise BadInputError(f"Bundle {bundle} does not exist or is not a directory.")
    kid = key_id(key) if key is not None else None
    try:
        _verify.verify_bundle(bundle, key)
    except _verify.BundleVerificationError as err:
        digest = _digest_or_none(bundle)
        return VerifyResult(str(bundle), False, err.problems, digest, kid)
    return VerifyResult(str(bundle), True, (), _verify.manifest_digest(bundle), kid)


def verified_manifest(bundle: Path, public_key: Ed25519PublicKey | Path) -> dict:
    """Verify ``bundle`` against ``public_key`` with edgec's own verifier; return its manifest.

    This is the check ``edgec run``, ``serve`` and ``install`` make before anything inside the
    bundle is read as code: the verifier is the one installed with edgec, never the bundle's.

    Raises:
        BadInputError: The bundle directory does not exist or the key file is unusable.
        VerificationError: The bundle does not verify (exit code 1), naming every problem.
    """
    bundle = Path(bundle)
    key = as_public_key(public_key)
    if not bundle.is_dir():
        raise BadInputError(f"Bundle {bundle} does not exist or is not a directory.")
    try:
        return _verify.verify_bundle(bundle, key)
    except _verify.BundleVerificationError as err:
        result = VerifyResult(str(bundle), False, err.problems)
        raise VerificationError(
            f"Refusing to run {bundle}: it does not verify: {_reasons(result)}."
        ) from None


def _digest_or_none(bundle: Path) -> str | None:
    try:
        return _verify.manifest_digest(bundle)
    except OSError:
        return None


def require_valid(result: VerifyResult) -> VerifyResult:
    """Return ``result`` when valid.

    Raises:
        VerificationError: The bundle does not verify (exit code 1), with every reason.
    """
    if not result.valid:
        raise VerificationError(f"Bundle {result.bundle} does not verify: {_reasons(result)}.")
    return result


def _reasons(result: VerifyResult) -> str:
    shown = list(result.problems[:10])
    if len(result.problems) > 10:
        shown.append(f"and {len(result.problems) - 10} more problems")
    return "; ".join(shown)


def sign_bundle(bundle: Path, private_key: Ed25519PrivateKey | Path) -> Path:
    """Write ``manifest.sig`` for a bundle whose files match its manifest.

    Signing a bundle vouches for it, so a bundle whose files do not match its manifest is
    refused rather than signed.

    Returns:
        The signature file.

    Raises:
        BadInputError: The bundle or key file is unusable.
        VerificationError: The bundle's files do not match its manifest.
    """
    bundle = Path(bundle)
    key = (
        private_key
        if isinstance(private_key, Ed25519PrivateKey)
        else load_private_key(Path(private_key))
    )
    require_valid(verify_bundle(bundle))
    signature = key.sign((bundle / _verify.MANIFEST).read_bytes())
    path = bundle / SIGNATURE
    try:
        write_atomic(path, signature, mode=0o644)
    except OSError as err:
        raise BadInputError(f"Cannot write {path}: {err.strerror}.") from None
    return path
