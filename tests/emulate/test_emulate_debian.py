"""Debian's package index and ``.deb`` files read without dpkg: the sysroot's raw material.

A ``.deb`` built here (an ``ar`` archive with an xz ``data.tar``, as Debian ships them) unpacks
into a self-contained tree: an absolute symbolic link becomes relative (else it would point
into the host), a hard link becomes a copy, a path that climbs out is not written. The
dependency closure follows the first alternative of each relation and leaves out the packaging
tools nothing loads at run time.
"""

from __future__ import annotations

import io
import lzma
import tarfile
from pathlib import Path

import pytest

from edgec.emulate import debian

INDEX = """\
Package: python3.11-minimal
Version: 3.11.2-6
Pre-Depends: libc6 (>= 2.35)
Depends: libpython3.11-minimal (= 3.11.2-6), zlib1g (>= 1:1.2.0)
Filename: pool/main/p/python3.11/python3.11-minimal_3.11.2-6_arm64.deb
Size: 100
SHA256: aa
Description: a description
 over two lines: Depends: not-a-field

Package: libpython3.11-minimal
Version: 3.11.2-6
Depends: libc6 (>= 2.17), libssl3 | libssl1.1
Filename: pool/main/p/python3.11/libpython3.11-minimal_3.11.2-6_arm64.deb
Size: 200
SHA256: bb

Package: libc6
Version: 2.36-9
Depends: libgcc-s1
Filename: pool/main/g/glibc/libc6_2.36-9_arm64.deb
Size: 300
SHA256: cc

Package: libgcc-s1
Version: 12.2.0
Filename: pool/main/g/gcc-12/libgcc-s1_12.2.0_arm64.deb
Size: 10
SHA256: dd

Package: zlib1g
Version: 1.2.13
Depends: libc6 (>= 2.17)
Filename: pool/main/z/zlib/zlib1g_1.2.13_arm64.deb
Size: 20
SHA256: ee

Package: libssl3
Version: 3.0.15
Depends: libc6 (>= 2.34), readline-common
Filename: pool/main/o/openssl/libssl3_3.0.15_arm64.deb
Size: 30
SHA256: ff

Package: readline-common
Version: 8.2
Depends: dpkg (>= 1.15.4) | install-info
Filename: pool/main/r/readline/readline-common_8.2_all.deb
Size: 40
SHA256: 11
"""


def test_index_fields_and_dependencies_are_read():
    """Name, version, file, size, hash; dependencies by name, first alternative, no version."""
    index = debian.read_index(lzma.compress(INDEX.encode()))
    python = index["python3.11-minimal"]
    assert python.filename.endswith("python3.11-minimal_3.11.2-6_arm64.deb")
    assert (python.version, python.size, python.sha256) == ("3.11.2-6", 100, "aa")
    assert python.depends == ("libc6", "libpython3.11-minimal", "zlib1g")
    assert index["libpython3.11-minimal"].depends == ("libc6", "libssl3")


def test_closure_follows_dependencies_and_leaves_out_packaging_tools():
    """readline-common needs dpkg to be installed, never to run: dpkg is not fetched."""
    index = debian.parse_index(INDEX)
    names = [p.name for p in debian.closure(index, ["python3.11-minimal"])]
    expected = ["python3.11-minimal", "libpython3.11-minimal", "libc6", "libgcc-s1", "zlib1g"]
    assert names == sorted([*expected, "libssl3", "readline-common"])


def test_closure_names_a_package_the_index_lacks():
    with pytest.raises(debian.DebianError, match=r"has no python3\.12-minimal"):
        debian.closure(debian.parse_index(INDEX), ["python3.12-minimal"])


def test_an_index_that_is_not_xz_is_refused():
    with pytest.raises(debian.DebianError, match="not an xz file"):
        debian.read_index(b"<html>captive portal</html>")


def make_deb(entries: list[tuple[str, str, bytes | str]], compression: str = "xz") -> bytes:
    """A ``.deb``: ``debian-binary``, ``control.tar.xz`` and ``data.tar.<compression>`` holding
    ``entries`` (``(kind, name, data)``: ``file`` bytes, ``sym``/``hard`` link target)."""
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode=f"w:{compression}") as archive:
        for kind, name, payload in entries:
            info = tarfile.TarInfo(name)
            if kind == "file":
                info.size, info.mode = len(payload), 0o755
                archive.addfile(info, io.BytesIO(payload))
            else:
                info.type = tarfile.SYMTYPE if kind == "sym" else tarfile.LNKTYPE
                info.linkname = payload
                archive.addfile(info)
    members = [
        ("debian-binary", b"2.0\n"),
        ("control.tar.xz", lzma.compress(b"")),
        (f"data.tar.{compression}", data.getvalue()),
    ]
    out = bytearray(b"!<arch>\n")
    for name, body in members:
        header = f"{name:<16}{0:<12}{0:<6}{0:<6}{'100644':<8}{len(body):<10}`\n".encode()
        out += header + body + (b"\n" if len(body) % 2 else b"")
    return bytes(out)


def test_deb_unpacks_into_a_self_contained_tree(tmp_path: Path):
    deb = make_deb(
        [
            ("file", "./lib/aarch64-linux-gnu/libc.so.6", b"\x7fELF libc"),
            ("sym", "./lib/ld-linux-aarch64.so.1", "/lib/aarch64-linux-gnu/libc.so.6"),
            ("hard", "./usr/bin/python3", "./lib/aarch64-linux-gnu/libc.so.6"),
            ("file", "../escape", b"outside"),
        ]
    )
    dest = tmp_path / "root"
    debian.extract_deb(deb, dest)
    link = dest / "lib" / "ld-linux-aarch64.so.1"
    assert link.is_symlink() and not Path(link.readlink()).is_absolute()
    assert link.read_bytes() == b"\x7fELF libc"  # resolves inside the tree, not the host
    copy = dest / "usr" / "bin" / "python3"
    assert copy.read_bytes() == b"\x7fELF libc" and not copy.is_symlink()
    assert not (tmp_path / "escape").exists()


def test_gzip_data_unpacks_too(tmp_path: Path):
    debian.extract_deb(make_deb([("file", "./etc/x", b"x")], "gz"), tmp_path)
    assert (tmp_path / "etc" / "x").read_bytes() == b"x"


def test_not_a_deb_is_refused(tmp_path: Path):
    with pytest.raises(debian.DebianError, match="no ar header"):
        debian.extract_deb(b"PK\x03\x04 a zip", tmp_path)
