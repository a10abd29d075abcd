"""Verify an edgec bundle before anything in it runs: signature, every file's hash, no extras.

This module is self-contained on purpose: it imports only the standard library and
``cryptography``, never ``edgec``, so the runtime generator can copy it verbatim into a bundle's
``runtime/`` and a device can refuse a tampered or half-written bundle without edgec installed.

What is checked, in order:

1. ``manifest.json`` exists. When a public key is given, ``manifest.sig`` exists and is a valid
   ed25519 signature of the exact bytes of ``manifest.json`` (the detached signature is the raw
   64 bytes). Without a key only integrity is checked: anyone could have rewritten the manifest
   and its hashes together, so only a key makes a bundle trusted.
2. The manifest parses and has a ``files`` table ``{path: {"sha256": hex, "bytes": int}}``.
3. Every listed file is a regular file (not a symlink) inside the bundle, with the listed size
   and sha256.
4. No other file, symlink or special file is present, apart from ``manifest.json`` and
   ``manifest.sig``. Empty directories are ignored.

Every problem is collected, so one run names every changed, missing or extra file. A loader
should verify, then load from the directory it verified (resolve ``current`` once).

:func:`import_verified` then imports a module of the bundle's ``runtime/`` package from that
directory, checking every source file against the verified manifest's sha256 as it is read (so
a file swapped between the check and the import is refused, not run), opening none through a
symbolic link and writing no bytecode. The code that verifies must not come from the bundle it
verifies: a tampered bundle could carry a verifier that says yes. So edgec uses its own copy of
this module, and a device without edgec uses the copy ``edgec install`` puts beside
``current`` (the trust root); the copy inside a bundle's ``runtime/`` is for reading only.

Example::

    from verify_bundle import BundleVerificationError, verify_bundle

    try:
        manifest = verify_bundle("/opt/models/current", public_key=open("edgec.pub", "rb").read())
    except BundleVerificationError as err:
        raise SystemExit(f"refusing to run: {err}")
"""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.util
import json
import os
import sys
from pathlib import Path, PurePosixPath
from types import ModuleType

MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
UNLISTED = frozenset({MANIFEST, SIGNATURE})
_CHUNK = 1 << 20


class BundleVerificationError(Exception):
    """The bundle does not verify; ``problems`` lists every reason, one sentence each."""

    def __init__(self, bundle: str | os.PathLike, problems: list[str]):
        self.bundle = str(bundle)
        self.problems = tuple(problems)
        shown = list(self.problems[:10])
        if len(self.problems) > 10:
            shown.append(f"and {len(self.problems) - 10} more problems")
        super().__init__(f"bundle {self.bundle} does not verify: " + "; ".join(shown))


def load_public_key(data: bytes):
    """An ed25519 public key from PEM (``edgec.pub``) or its raw 32 bytes.

    Raises:
        ValueError: The data is not an ed25519 public key.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    if len(data) == 32:
        return Ed25519PublicKey.from_public_bytes(data)
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError):
        raise ValueError("not a PEM public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"a {type(key).__name__}, not an ed25519 public key")
    return key


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, streamed; a symbolic link is not followed (``OSError``)."""
    digest = hashlib.sha256()
    with os.fdopen(os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0)), "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def manifest_digest(bundle: str | os.PathLike) -> str:
    """Hex sha256 of ``manifest.json``'s bytes: the bundle's version id (it pins every file)."""
    return hashlib.sha256(Path(bundle, MANIFEST).read_bytes()).hexdigest()


def verify_bundle(bundle: str | os.PathLike, public_key=None) -> dict:
    """Check a bundle directory; return its manifest when it verifies.

    Args:
        bundle: The bundle directory.
        public_key: An ``Ed25519PublicKey``, PEM bytes or raw 32 bytes. When given, the bundle
            must carry a valid signature by the matching private key. ``None`` checks integrity
            only.

    Raises:
        BundleVerificationError: Every reason the bundle does not verify.
        ValueError: ``public_key`` is not an ed25519 public key.
    """
    root = Path(bundle)
    if isinstance(public_key, bytes | bytearray):
        public_key = load_public_key(bytes(public_key))
    manifest_path = root / MANIFEST
    if manifest_path.is_symlink() or not manifest_path.is_file():
        raise BundleVerificationError(root, [f"{MANIFEST} is missing"])
    raw = manifest_path.read_bytes()
    problems: list[str] = []
    if public_key is not None:
        problems += _check_signature(root, raw, public_key)
    try:
        manifest = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise BundleVerificationError(root, [*problems, f"{MANIFEST} is not valid JSON"]) from None
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict):
        raise BundleVerificationError(root, [*problems, f"{MANIFEST} has no 'files' table"])
    for rel, entry in sorted(files.items()):
        problems += _check_file(root, rel, entry)
    problems += _check_unlisted(root, files)
    if problems:
        raise BundleVerificationError(root, problems)
    return manifest


def _check_signature(root: Path, raw: bytes, public_key) -> list[str]:
    from cryptography.exceptions import InvalidSignature

    sig_path = root / SIGNATURE
    if sig_path.is_symlink() or not sig_path.is_file():
        return [f"{SIGNATURE} is missing: the bundle is not signed"]
    try:
        public_key.verify(sig_path.read_bytes(), raw)
    except InvalidSignature:
        return [
            f"{SIGNATURE} does not match {MANIFEST}: the manifest was changed after signing "
            "or was signed with another key"
        ]
    return []


def _safe_relative(rel: object) -> bool:
    if not isinstance(rel, str) or not rel or "\\" in rel or "\x00" in rel:
        return False
    path = PurePosixPath(rel)
    return not path.is_absolute() and all(part not in ("", ".", "..") for part in rel.split("/"))


def _check_file(root: Path, rel: str, entry: object) -> list[str]:
    if not _safe_relative(rel) or rel in UNLISTED:
        return [f"the manifest lists an invalid path {rel!r}"]
    if (
        not isinstance(entry, dict)
        or not isinstance(entry.get("sha256"), str)
        or not isinstance(entry.get("bytes"), int)
    ):
        return [f"{rel}: the manifest entry has no sha256 and bytes"]
    path = root / rel
    if _has_symlink(root, rel):
        return [f"{rel}: is a symbolic link; a bundle holds regular files only"]
    if not path.exists():
        return [f"{rel}: listed in the manifest but missing"]
    if not path.is_file():
        return [f"{rel}: is not a regular file"]
    try:
        actual = sha256_file(path)
    except OSError as err:  # e.g. swapped for a link since the check above
        return [f"{rel}: cannot be read ({err.strerror})"]
    size = path.stat().st_size
    if size != entry["bytes"]:
        return [
            f"{rel}: expected {entry['bytes']} bytes with sha256 {entry['sha256']}, "
            f"found {size} bytes with sha256 {actual}"
        ]
    if actual != entry["sha256"]:
        return [f"{rel}: sha256 expected {entry['sha256']}, got {actual}"]
    return []


def _has_symlink(root: Path, rel: str) -> bool:
    path = root
    for part in rel.split("/"):
        path = path / part
        if path.is_symlink():
            return True
    return False


def _check_unlisted(root: Path, files: dict) -> list[str]:
    problems = []
    for dirpath, dirnames, filenames in os.walk(root):
        base = Path(dirpath)
        for name in sorted(dirnames):
            if (base / name).is_symlink():
                rel = (base / name).relative_to(root).as_posix()
                problems.append(f"{rel}: a symbolic link that the manifest does not list")
        for name in sorted(filenames):
            rel = (base / name).relative_to(root).as_posix()
            if rel not in files and rel not in UNLISTED:
                link = " (a symbolic link)" if (base / name).is_symlink() else ""
                problems.append(f"{rel}: present but not listed in the manifest{link}")
    return problems


# ----------------------------------------------------------------------- verified imports
RUNTIME_DIR = "runtime"


class _PinnedLoader(importlib.abc.Loader):
    """Executes one source file of a bundle's runtime after checking it against the manifest."""

    def __init__(self, path: Path, rel: str, hashes: dict | None):
        self.path = path
        self.rel = rel
        self.hashes = hashes

    def create_module(self, spec):
        return None  # the default module object

    def exec_module(self, module: ModuleType) -> None:
        source = _read_no_follow(self.path, self.rel)
        if self.hashes is not None:
            entry = self.hashes.get(self.rel)
            expected = entry.get("sha256") if isinstance(entry, dict) else None
            if hashlib.sha256(source).hexdigest() != expected:
                raise BundleVerificationError(
                    self.path.parents[1],
                    [f"{self.rel}: changed after the bundle was verified (or not listed)"],
                )
        # compile() from the checked bytes: no bytecode is read or written.
        exec(compile(source, str(self.path), "exec", dont_inherit=True), module.__dict__)


class _BundleFinder(importlib.abc.MetaPathFinder):
    """Finds ``<package>`` and ``<package>.<module>`` in one bundle's ``runtime/`` only."""

    def __init__(self, package: str, directory: Path, hashes: dict | None):
        self.package = package
        self.directory = directory
        self.hashes = hashes

    def find_spec(self, fullname, path=None, target=None):
        if fullname == self.package:
            name, is_package = "__init__", True
        elif (
            fullname.startswith(self.package + ".") and "." not in fullname[len(self.package) + 1 :]
        ):
            name, is_package = fullname[len(self.package) + 1 :], False
        else:
            return None
        file = self.directory / f"{name}.py"
        if not os.path.lexists(file):
            return None
        loader = _PinnedLoader(file, f"{RUNTIME_DIR}/{name}.py", self.hashes)
        return importlib.util.spec_from_file_location(
            fullname,
            file,
            loader=loader,
            submodule_search_locations=[str(self.directory)] if is_package else None,
        )


def _read_no_follow(path: Path, rel: str) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError as err:
        problem = (
            "is a symbolic link" if os.path.islink(path) else f"cannot be read ({err.strerror})"
        )
        raise BundleVerificationError(path.parents[1], [f"{rel}: {problem}"]) from None
    with os.fdopen(fd, "rb") as handle:
        return handle.read()


def import_verified(
    bundle: str | os.PathLike, module: str, package: str, manifest: dict | None = None
) -> ModuleType:
    """Import ``runtime/<module>.py`` of ``bundle`` as ``<package>.<module>``.

    Args:
        bundle: The bundle directory (resolved: the one that was verified).
        module: ``device`` or ``gateway``.
        package: A module name for the bundle's ``runtime/`` package, unique to this bundle.
        manifest: The manifest :func:`verify_bundle` returned; every source file must match its
            sha256 as it is read. ``None`` (no verification) still refuses symbolic links.

    Raises:
        BundleVerificationError: A source file is a symbolic link, or differs from the manifest.
        ModuleNotFoundError: The module does not exist.
    """
    directory = Path(bundle) / RUNTIME_DIR
    if os.path.islink(directory):
        raise BundleVerificationError(bundle, [f"{RUNTIME_DIR}: is a symbolic link"])
    hashes = None if manifest is None else dict(manifest.get("files") or {})
    if package not in sys.modules:
        finder = _BundleFinder(package, directory, hashes)
        sys.meta_path.insert(0, finder)
        try:
            __import__(package)
        except BaseException:
            sys.meta_path.remove(finder)
            sys.modules.pop(package, None)
            raise
    return importlib.import_module(f"{package}.{module}")
