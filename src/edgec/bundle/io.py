"""Bundle I/O: staged writing with an atomic rename, the manifest, archives, reading back.

A bundle is written into a hidden temporary directory next to its destination (same
filesystem, so the final ``rename`` is atomic) and only renamed into place when everything is
written: a failed compile leaves nothing behind. ``manifest.json`` lists every other file with
its sha256 and size; the manifest (and its detached signature) are the only unlisted files.
The compiler hands over a typed :class:`~edgec.bundle.manifest.Manifest`; this is where it
becomes JSON.
Nothing time- or path-dependent goes into hashed content, so the same inputs give the same
manifest.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import os
import shutil
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path

from edgec.bundle.manifest import SCHEMA, Manifest
from edgec.errors import BadInputError

MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
UNLISTED = frozenset({MANIFEST, SIGNATURE})


def check_output(output: Path, force: bool) -> None:
    """Refuse an existing output without ``force`` or an output we could not create.

    Called before any work so a bad ``-o`` fails in a second, not after a long compile.

    Raises:
        BadInputError: The output exists (without ``force``), is a file, or its parent is not
            a writable directory.
    """
    if output.exists() or output.is_symlink():
        if not force:
            raise BadInputError(
                f"Output {output} already exists; pass --force to replace it or choose another -o."
            )
        if not output.is_dir():
            raise BadInputError(f"Output {output} exists and is not a directory.")
    parent = _existing_parent(output)
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise BadInputError(
            f"Output {output} cannot be created: {parent} is not a writable directory."
        )


def _existing_parent(path: Path) -> Path:
    parent = path.absolute().parent
    while not parent.exists():
        parent = parent.parent
    return parent


@contextlib.contextmanager
def staging_dir(output: Path, force: bool = False) -> Iterator[Path]:
    """Yield a temporary directory that becomes ``output`` only if the block succeeds."""
    check_output(output, force)
    output = output.absolute()
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}.", suffix=".tmp", dir=output.parent))
    except OSError as err:
        raise BadInputError(f"Output {output} cannot be created: {err.strerror}.") from None
    try:
        yield tmp
        _move_into_place(tmp, output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _move_into_place(tmp: Path, output: Path) -> None:
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; a bundle is meant to be shared
    if output.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{output.name}.", suffix=".old", dir=output.parent))
        os.rename(output, old / "bundle")
        os.rename(tmp, output)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, output)


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, streamed."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_table(root: Path) -> dict[str, dict]:
    """``{relative posix path: {"sha256", "bytes"}}`` for every file but the manifest/signature."""
    table = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file() or p.is_symlink()):
        rel = path.relative_to(root).as_posix()
        if rel in UNLISTED:
            continue
        table[rel] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
    return table


def manifest_bytes(manifest: dict) -> bytes:
    """The canonical serialisation of a manifest (sorted keys, fixed indent, final newline)."""
    return (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()


def write_manifest(root: Path, manifest: Manifest) -> dict:
    """Fill ``files`` from what is on disk under ``root``, write ``manifest.json`` and return
    what was written (the JSON form)."""
    written = {**manifest.to_json(), "schema": SCHEMA, "files": file_table(root)}
    (root / MANIFEST).write_bytes(manifest_bytes(written))
    return written


def read_manifest(bundle: Path) -> dict:
    """Read and minimally validate a bundle's manifest.

    Raises:
        BadInputError: Not a directory, no manifest, unreadable JSON, or another schema.
    """
    bundle = Path(bundle)
    if not bundle.is_dir():
        raise BadInputError(f"Bundle {bundle} does not exist or is not a directory.")
    path = bundle / MANIFEST
    if not path.is_file():
        raise BadInputError(f"{bundle} is not an edgec bundle: it has no {MANIFEST}.")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise BadInputError(f"{path} is not valid JSON.") from None
    if not isinstance(manifest, dict) or manifest.get("schema") != SCHEMA:
        found = manifest.get("schema") if isinstance(manifest, dict) else None
        raise BadInputError(f"{path} has schema {found!r}; this edgec reads {SCHEMA!r} bundles.")
    if not manifest.get("stages"):
        raise BadInputError(f"{path} lists no stages.")
    return manifest


def write_archive(bundle: Path) -> Path:
    """Write ``<bundle>.tar.gz`` reproducibly (sorted entries, zero mtimes and owners)."""
    bundle = bundle.absolute()
    archive = bundle.with_name(bundle.name + ".tar.gz")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(bundle.rglob("*")):
            info = tar.gettarinfo(str(path), arcname=f"{bundle.name}/{path.relative_to(bundle)}")
            info.mtime = 0
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mode = 0o755 if path.is_dir() else 0o644
            if path.is_file():
                with path.open("rb") as handle:
                    tar.addfile(info, handle)
            else:
                tar.addfile(info)
    tmp = archive.with_name(f".{archive.name}.tmp")
    with open(tmp, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz:
        gz.write(buffer.getvalue())
    os.replace(tmp, archive)
    return archive
