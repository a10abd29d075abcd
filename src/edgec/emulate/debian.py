"""Debian's arm64 packages, without dpkg or root: read the index, pick a closure, unpack.

A ``Packages`` index (``dists/RELEASE/main/binary-arm64/Packages.xz`` on a Debian mirror)
names every package with its ``Depends``, ``Filename``, ``Size`` and ``SHA256``.
:func:`closure` follows ``Pre-Depends`` and ``Depends`` from a few roots (the first of each set
of alternatives, versions not compared: one index is one consistent release), leaving out the
packaging machinery a program never loads at run time. :func:`extract_deb` unpacks a ``.deb``
(an ``ar`` archive whose ``data.tar`` holds the files) into a directory with the standard
library alone, and turns every absolute symbolic link into a relative one, so the tree is a
self-contained sysroot wherever it lies.
"""

from __future__ import annotations

import io
import lzma
import os
import re
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

# Needed to install packages, never loaded by a running program (readline-common, which
# libpython's readline module pulls in, depends on dpkg, and dpkg on tar).
NOT_AT_RUN_TIME = frozenset({"dpkg", "tar", "debconf", "perl-base", "install-info"})


class DebianError(RuntimeError):
    """The index lacks a package, or a ``.deb`` cannot be read."""


@dataclass(frozen=True)
class Package:
    """One binary package of the index.

    Attributes:
        name: The package name.
        version: Its version.
        filename: Its path on the mirror (``pool/main/...``).
        size: Bytes of the ``.deb``.
        sha256: The ``.deb``'s SHA-256 (hex).
        depends: The package names it needs (first alternative of each dependency).
    """

    name: str
    version: str
    filename: str
    size: int
    sha256: str
    depends: tuple[str, ...]


def parse_index(text: str) -> dict[str, Package]:
    """Every package of a ``Packages`` index (its text, decompressed), by name."""
    packages = {}
    for paragraph in text.split("\n\n"):
        fields = {}
        for line in paragraph.splitlines():
            if line[:1] in (" ", "\t") or ":" not in line:
                continue  # a continuation line (descriptions): no field we read
            key, _, value = line.partition(":")
            fields[key] = value.strip()
        if "Package" not in fields or "Filename" not in fields:
            continue
        packages[fields["Package"]] = Package(
            name=fields["Package"],
            version=fields.get("Version", ""),
            filename=fields["Filename"],
            size=int(fields.get("Size", 0)),
            sha256=fields.get("SHA256", ""),
            depends=tuple(_depends(fields)),
        )
    return packages


def _depends(fields: dict[str, str]) -> Iterable[str]:
    for field in ("Pre-Depends", "Depends"):
        for relation in fields.get(field, "").split(","):
            first = relation.split("|")[0].strip()
            if first:
                # "libc6 (>= 2.34)", "python3:any": the name alone
                yield re.split(r"[\s(:]", first, maxsplit=1)[0]


def read_index(data: bytes) -> dict[str, Package]:
    """:func:`parse_index` of a ``Packages.xz`` file's bytes."""
    try:
        return parse_index(lzma.decompress(data).decode("utf-8", "replace"))
    except lzma.LZMAError as err:
        raise DebianError(f"the package index is not an xz file ({err})") from None


def closure(index: dict[str, Package], roots: Iterable[str]) -> list[Package]:
    """``roots`` and everything they need at run time, sorted by name.

    Raises:
        DebianError: A root, or a package one of them needs, is not in the index.
    """
    chosen: dict[str, Package] = {}
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name in chosen or name in NOT_AT_RUN_TIME:
            continue
        if name not in index:
            raise DebianError(f"the package index has no {name}")
        chosen[name] = index[name]
        todo.extend(index[name].depends)
    return sorted(chosen.values(), key=lambda package: package.name)


def _ar_members(data: bytes) -> Iterable[tuple[str, bytes]]:
    if not data.startswith(b"!<arch>\n"):
        raise DebianError("not a .deb (no ar header)")
    offset = 8
    while offset + 60 <= len(data):
        header = data[offset : offset + 60]
        name = header[:16].decode("ascii", "replace").strip().rstrip("/")
        size = int(header[48:58].decode("ascii").strip())
        offset += 60
        yield name, data[offset : offset + size]
        offset += size + (size & 1)  # members are 2-byte aligned


def extract_deb(data: bytes, dest: Path) -> None:
    """Unpack a ``.deb``'s files (its ``data.tar.*``) into ``dest``.

    Only regular files, directories and symbolic links are written, all inside ``dest``;
    absolute link targets become relative to the link, so they stay inside ``dest``.

    Raises:
        DebianError: Not a ``.deb``, or its data is compressed in a way Python cannot read
            (zstd before Python 3.14).
    """
    for name, member in _ar_members(data):
        if not name.startswith("data.tar"):
            continue
        if name.endswith(".zst"):
            raise DebianError("the .deb's data is zstd-compressed, which this Python cannot read")
        try:
            with tarfile.open(fileobj=io.BytesIO(member), mode="r:*") as archive:
                _extract_tar(archive, dest)
        except tarfile.TarError as err:
            raise DebianError(f"the .deb's data cannot be read ({err})") from None
        return
    raise DebianError("not a .deb (no data.tar member)")


def _extract_tar(archive: tarfile.TarFile, dest: Path) -> None:
    for entry in archive:
        rel = PurePosixPath(entry.name.lstrip("./") or ".")
        if ".." in rel.parts or rel == PurePosixPath("."):
            continue
        path = dest.joinpath(*rel.parts)
        if entry.isdir():
            path.mkdir(parents=True, exist_ok=True)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_symlink() or path.exists():
            path.unlink()
        if entry.issym():
            target = entry.linkname
            if target.startswith("/"):
                target = os.path.relpath("/" + target.lstrip("/"), "/" + rel.parent.as_posix())
            path.symlink_to(target)
        elif entry.islnk():
            source = dest.joinpath(*PurePosixPath(entry.linkname.lstrip("./")).parts)
            path.write_bytes(source.read_bytes())
            path.chmod(entry.mode & 0o755 | 0o600)
        elif entry.isfile():
            with archive.extractfile(entry) as stream:
                path.write_bytes(stream.read())
            path.chmod(entry.mode & 0o755 | 0o600)
