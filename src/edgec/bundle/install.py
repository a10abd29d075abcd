"""Installing bundles on a device: verified copy, atomic ``current`` switch, one-step rollback.

An install directory looks like this::

    DIR/
      current  -> versions/<sha256 of manifest.json>   (what the runtime loads)
      previous -> versions/<sha256 of the one before>  (what --rollback goes back to)
      versions/<sha256>/...                             (complete, verified bundles, never edited)
      trust/launch.py, trust/verify_bundle.py           (the trust root: verifier and launcher)
      trust/edgec.pub                                   (the pinned public key, after --key)
      .lock                                             (serialises installers)

``trust/`` lies outside every bundle: it is edgec's own verifier (never the copy a bundle
carries) and a launcher that verifies ``current`` before it imports anything from it, for
devices without edgec (``python3 -B DIR/trust/launch.py device ...``). The key given to the
first ``--key`` install is pinned there; later installs and rollbacks without ``--key`` are
checked against the pinned key, and a new ``--key`` replaces it.

``install_bundle`` verifies the bundle, copies it into ``versions/.staging-*`` (fsyncing every
file), verifies the copy again, renames it to ``versions/<sha256>`` and only then points
``previous`` at the old version and ``current`` at the new one; each symlink is switched with
``os.replace`` of a fresh link, which is atomic on POSIX. Whenever the process dies (SIGKILL,
power loss after the fsyncs), ``current`` points at the old or the new complete bundle, never
at a partial one; leftovers of an interrupted install are removed by the next one. Versions that
neither link references are deleted, so at most two are kept. ``previous`` is bookkeeping and
is switched on the safe side of ``current``: a crash between the two switches of an install
leaves both on the old version (nothing installed), and one during a rollback leaves both on
the version rolled back to (rolled back, no roll-forward).

A version directory is named by its manifest's sha256, which pins every file. If a copy of the
same version is already installed and verifies, it is reused; if it no longer verifies (edited
on disk, or installed unsigned before a key was configured), a fresh copy is made under
``<sha256>.<n>`` and the broken one is dropped once nothing points at it.

The runtime should resolve ``current`` once (``os.path.realpath``), verify that directory and
load from it, so a switch during loading cannot mix two versions. POSIX only (``fcntl``,
symlinks).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edgec.bundle import trust
from edgec.errors import BadInputError, VerificationError
from edgec.runtime import verify_bundle as _verify

logger = logging.getLogger(__name__)

CURRENT = "current"
PREVIOUS = "previous"
VERSIONS = "versions"
LOCK = ".lock"
TRUST = "trust"
TRUST_FILES = {"launch.py": "launcher.py", "verify_bundle.py": "verify_bundle.py"}
_VERSION_RE = re.compile(r"^[0-9a-f]{64}(\.[0-9]+)?$")
_TMP_LINK_RE = re.compile(rf"^\.({CURRENT}|{PREVIOUS})\.[0-9a-f]+\.tmp$")
_CHUNK = 1 << 20


@dataclass(frozen=True)
class InstallResult:
    """What an install or rollback did.

    Attributes:
        into: The install directory.
        action: ``installed``, ``already-current`` or ``rolled-back``.
        current: The version directory name ``current`` now points to.
        previous: The version directory name ``previous`` points to, if any.
        signature_checked: Whether a public key was given and the signature checked.
    """

    into: str
    action: str
    current: str
    previous: str | None
    signature_checked: bool

    @property
    def manifest_sha256(self) -> str:
        """The current version's manifest hash."""
        return _digest_of(self.current)

    @property
    def summary(self) -> str:
        """One line for people."""
        text = f"{self.action}: {self.into}/{CURRENT} -> {VERSIONS}/{self.current}"
        if self.previous:
            text += f" (previous: {self.previous[:16]})"
        if not self.signature_checked:
            text += "; signature not checked (no --key)"
        return text

    def to_json(self) -> dict:
        """Machine-readable form for ``--json``."""
        return {
            "into": self.into,
            "action": self.action,
            "current": f"{VERSIONS}/{self.current}",
            "previous": f"{VERSIONS}/{self.previous}" if self.previous else None,
            "manifest_sha256": self.manifest_sha256,
            "signature_checked": self.signature_checked,
        }


def install_bundle(
    bundle: Path, into: Path, public_key: Ed25519PublicKey | Path | None = None
) -> InstallResult:
    """Verify ``bundle``, copy it into ``into/versions/`` and make it ``current``.

    Args:
        bundle: The bundle directory.
        into: The install directory (created if missing).
        public_key: When given, the bundle must be signed by the matching private key.

    Raises:
        BadInputError: Unusable bundle path, key file or install directory, or another install
            is running there.
        VerificationError: The bundle (or the copy just made) does not verify.
    """
    bundle, into = Path(bundle), Path(into)
    given = trust.as_public_key(public_key)
    key = given or pinned_key(into)
    trust.require_valid(trust.verify_bundle(bundle, key))
    digest = _verify.manifest_digest(bundle)
    _prepare(into)
    with _locked(into):
        current, previous = _read_link(into, CURRENT), _read_link(into, PREVIOUS)
        _collect_garbage(into, keep={current, previous}, keep_digest=digest)
        version = _find_valid_copy(into, digest, key) or _copy_in(bundle, into, digest, key)
        _write_trust_root(into, given)  # before current moves: the launcher is there first
        if version == current:
            return InstallResult(str(into), "already-current", current, previous, key is not None)
        if current is not None and _digest_of(current) != digest:
            _point(into, PREVIOUS, current)  # first: a crash here leaves current untouched
            previous = current
        _point(into, CURRENT, version)
        _collect_garbage(into, keep={version, previous})
    logger.info("Installed %s into %s", version, into)
    return InstallResult(str(into), "installed", version, previous, key is not None)


def rollback(into: Path, public_key: Ed25519PublicKey | Path | None = None) -> InstallResult:
    """Make ``previous`` current again (and the current version previous).

    Raises:
        BadInputError: ``into`` is not an install directory or has no previous version.
        VerificationError: The previous version no longer verifies (nothing is changed).
    """
    into = Path(into)
    key = trust.as_public_key(public_key) or pinned_key(into)
    if not (into / VERSIONS).is_dir():
        raise BadInputError(
            f"{into} is not an install directory (no {VERSIONS}/); install a bundle there first."
        )
    with _locked(into):
        current, previous = _read_link(into, CURRENT), _read_link(into, PREVIOUS)
        if previous is None or previous == current:
            raise BadInputError(
                f"Nothing to roll back to: {into} has no previous version (a rollback needs "
                "two installs)."
            )
        result = trust.verify_bundle(into / VERSIONS / previous, key)
        if not result.valid:
            raise VerificationError(
                f"Not rolling back: the previous version {previous} does not verify: "
                + "; ".join(result.problems)
                + "."
            )
        _point(into, CURRENT, previous)  # first: the user's intent, atomically
        if current is not None:
            _point(into, PREVIOUS, current)
        else:
            (into / PREVIOUS).unlink()
        _collect_garbage(into, keep={previous, current})
    return InstallResult(str(into), "rolled-back", previous, current, key is not None)


def current_bundle(into: Path) -> Path | None:
    """The resolved directory ``into/current`` points to, or ``None`` before the first install."""
    name = _read_link(Path(into), CURRENT)
    return (Path(into) / VERSIONS / name).resolve() if name else None


def pinned_key(into: Path) -> Ed25519PublicKey | None:
    """The public key pinned in ``into/trust/edgec.pub`` by an earlier ``--key`` install."""
    path = Path(into) / TRUST / trust.PUBLIC_KEY_NAME
    return trust.load_public_key(path) if path.is_file() else None


def _write_trust_root(into: Path, key: Ed25519PublicKey | None) -> None:
    """Write (or refresh) the verifier, the launcher and, when given, the pinned key."""
    directory = into / TRUST
    if directory.is_symlink() or (directory.exists() and not directory.is_dir()):
        raise BadInputError(
            f"{directory} is not a directory; edgec install manages it: move it away."
        )
    directory.mkdir(exist_ok=True)
    files = {
        name: (resources.files("edgec.runtime") / source).read_bytes()
        for name, source in TRUST_FILES.items()
    }
    if key is not None:
        files[trust.PUBLIC_KEY_NAME] = key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    for name, data in files.items():
        path = directory / name
        if not path.is_symlink() and path.is_file() and path.read_bytes() == data:
            continue
        trust.write_atomic(path, data, mode=0o644)
    _fsync_dir(directory)


# ------------------------------------------------------------------------------ helpers
def _digest_of(version: str) -> str:
    return version.split(".", 1)[0]


def _prepare(into: Path) -> None:
    if into.exists() and not into.is_dir():
        raise BadInputError(f"--into {into} exists and is not a directory.")
    try:
        (into / VERSIONS).mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise BadInputError(
            f"Cannot create the install directory {into}: {err.strerror}."
        ) from None


@contextlib.contextmanager
def _locked(into: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``into/.lock`` (released by the kernel if we are killed)."""
    import fcntl

    try:
        fd = os.open(into / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise BadInputError(f"Cannot lock {into}: {err.strerror}.") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BadInputError(
                f"Another edgec install is running on {into}; try again when it has finished."
            ) from None
        yield
    finally:
        os.close(fd)


def _read_link(into: Path, name: str) -> str | None:
    """The version a link names, ``None`` if there is no link or its version is gone."""
    link = into / name
    if not link.is_symlink():
        if link.exists():
            raise BadInputError(
                f"{link} exists and is not a symlink; edgec install manages it: move it away."
            )
        return None
    target = os.readlink(link)
    parts = target.split("/")
    if len(parts) != 2 or parts[0] != VERSIONS or not _VERSION_RE.match(parts[1]):
        raise BadInputError(
            f"{link} points to {target}, not into {VERSIONS}/; it was not made by edgec install."
        )
    if not (into / VERSIONS / parts[1]).is_dir():
        logger.warning("%s points to a missing version %s; ignoring it", link, parts[1])
        return None
    return parts[1]


def _find_valid_copy(into: Path, digest: str, key: Ed25519PublicKey | None) -> str | None:
    """An installed copy of version ``digest`` that still verifies, if any."""
    for path in sorted((into / VERSIONS).glob(f"{digest}*")):
        if not _VERSION_RE.match(path.name) or _digest_of(path.name) != digest:
            continue
        result = trust.verify_bundle(path, key)
        if result.valid and result.manifest_sha256 == digest:
            return path.name
        logger.warning("Installed copy %s does not verify; making a fresh one", path.name)
    return None


def _free_name(versions: Path, digest: str) -> str:
    name, n = digest, 0
    while (versions / name).exists() or (versions / name).is_symlink():
        n += 1
        name = f"{digest}.{n}"
    return name


def _copy_in(bundle: Path, into: Path, digest: str, key: Ed25519PublicKey | None) -> str:
    """Copy a verified bundle into a new version directory; return its name."""
    versions = into / VERSIONS
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=versions))
    try:
        manifest = json.loads((bundle / _verify.MANIFEST).read_bytes())
        names = [*manifest["files"], _verify.MANIFEST]
        if (bundle / _verify.SIGNATURE).is_file():
            names.append(_verify.SIGNATURE)
        directories = {staging}
        for rel in names:
            target = staging / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            _copy_file(bundle / rel, target)
            parent = target.parent
            while parent != staging:
                directories.add(parent)
                parent = parent.parent
        for directory in sorted(directories, reverse=True):  # children before parents
            _fsync_dir(directory)
        # Verify what will be loaded, not only the source: catches a source that changed
        # after it was checked and a bad write.
        result = trust.verify_bundle(staging, key)
        if result.valid and result.manifest_sha256 != digest:
            raise VerificationError(f"Bundle {bundle} changed while it was being installed.")
        trust.require_valid(result)
        os.chmod(staging, 0o755)
        name = _free_name(versions, digest)
        os.rename(staging, versions / name)
        _fsync_dir(versions)
        return name
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _copy_file(source: Path, target: Path) -> None:
    with open(source, "rb") as src, open(target, "wb") as dst:
        for chunk in iter(lambda: src.read(_CHUNK), b""):
            dst.write(chunk)
        dst.flush()
        os.fsync(dst.fileno())
    os.chmod(target, 0o644)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _point(into: Path, name: str, version: str) -> None:
    """Atomically make ``into/name`` a symlink to ``versions/version``."""
    tmp = into / f".{name}.{secrets.token_hex(8)}.tmp"
    os.symlink(f"{VERSIONS}/{version}", tmp)
    try:
        os.replace(tmp, into / name)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(into)


def _collect_garbage(into: Path, keep: set[str | None], keep_digest: str | None = None) -> None:
    """Delete versions nothing points to (but ``keep_digest``'s) and leftovers of crashes."""
    versions = into / VERSIONS
    for child in sorted(versions.iterdir()):
        if child.name in keep or (keep_digest and _digest_of(child.name) == keep_digest):
            continue
        if child.name.startswith("."):  # .staging-* / .trash-* from an interrupted run
            _remove(child)
        elif _VERSION_RE.match(child.name):
            # Rename first so a half-deleted version never sits under a version name.
            trash = versions / f".trash-{secrets.token_hex(8)}"
            os.rename(child, trash)
            _remove(trash)
    for child in into.iterdir():
        if _TMP_LINK_RE.match(child.name) and child.is_symlink():
            child.unlink()
    if (into / TRUST).is_dir():  # a trust file write cut short
        for child in (into / TRUST).glob(".*.tmp"):
            child.unlink()


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
