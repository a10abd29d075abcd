"""Fetching the emulated device's files: from a Debian mirror on loopback, into the cache.

A mirror served here over HTTP (a ``Packages.xz`` index and ``.deb`` files built by the tests)
gives a sysroot that is unpacked, checked and renamed into the cache only when whole; a
package whose bytes do not match the index's SHA-256, a mirror or a package index that cannot
be reached: one sentence each, and nothing left in the cache. Also: which wheels a bundle
needs, and that their pins are the versions edgec is tested with.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import lzma
import threading
from pathlib import Path

import pytest
from test_emulate_debian import make_deb

from edgec.emulate import run, sysroot

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def cache(tmp_path: Path, monkeypatch) -> Path:
    path = tmp_path / "cache"
    monkeypatch.setenv(sysroot.CACHE_ENV, str(path))
    return path


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def mirror(tmp_path: Path, monkeypatch):
    """A Debian mirror on loopback whose index lists the sysroot's root packages (no
    dependencies), each a small real ``.deb``; returns a function that rewrites a package's
    hash in the index."""
    root = tmp_path / "mirror"
    debs = {}
    for name in sysroot.ROOT_PACKAGES:
        payload = f"{name} for arm64".encode()
        path = "./usr/bin/python3.11" if name == "python3.11-minimal" else f"./usr/share/{name}"
        debs[name] = make_deb([("file", path, payload)])
        (root / "pool").mkdir(parents=True, exist_ok=True)
        (root / "pool" / f"{name}.deb").write_bytes(debs[name])

    def write_index(bad: str | None = None) -> None:
        paragraphs = [
            f"Package: {name}\nVersion: 1.0\nFilename: pool/{name}.deb\nSize: {len(data)}\n"
            f"SHA256: {'0' * 64 if name == bad else hashlib.sha256(data).hexdigest()}\n"
            for name, data in debs.items()
        ]
        index = root / "dists" / sysroot.RELEASE / "main" / "binary-arm64"
        index.mkdir(parents=True, exist_ok=True)
        (index / "Packages.xz").write_bytes(lzma.compress("\n".join(paragraphs).encode()))

    write_index()
    handler = functools.partial(_Quiet, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv(sysroot.MIRROR_ENV, f"http://127.0.0.1:{server.server_address[1]}/")
    yield write_index
    server.shutdown()
    server.server_close()


def test_sysroot_is_unpacked_from_the_mirror_and_kept_when_whole(cache, mirror):
    """The packages' files, a Raspberry Pi 4 /proc/cpuinfo and the marker; no temporary
    directory left beside it; a second call fetches nothing (the mirror is gone then)."""
    fetcher = sysroot.Fetcher()
    root, sites = fetcher.ensure([])
    assert root == sysroot.sysroot_dir() and sites == []
    assert (root / "usr" / "bin" / "python3.11").read_bytes() == b"python3.11-minimal for arm64"
    assert "CPU part\t: 0xd08" in (root / "proc" / "cpuinfo").read_text()  # Cortex-A72
    assert (root / "sys" / "devices" / "system" / "cpu" / "possible").read_text() == "0-3\n"
    assert sysroot.is_ready(root)
    assert [p.name for p in cache.iterdir()] == [root.name]


def test_a_package_that_does_not_match_the_index_leaves_nothing(cache, mirror):
    mirror(bad="libstdc++6")
    with pytest.raises(sysroot.SetupError, match=r"libstdc\+\+6.deb .* does not match the SHA-256"):
        sysroot.Fetcher().ensure([])
    assert not sysroot.sysroot_dir().exists()
    assert list(cache.iterdir()) == []  # no half-built temporary directory either


def test_an_unreachable_mirror_is_one_sentence(cache, monkeypatch, closed_port_url):
    monkeypatch.setenv(sysroot.MIRROR_ENV, closed_port_url("/debian"))
    with pytest.raises(sysroot.SetupError) as caught:
        sysroot.Fetcher().ensure(["numpy"])
    message = str(caught.value)
    assert message.startswith("Cannot download http://127.0.0.1:") and "refused" in message
    assert "needs network access once" in message and message.endswith(".")
    assert not cache.exists() or not any(cache.rglob("*"))


def test_an_unreachable_package_index_is_one_sentence(cache, mirror, monkeypatch, closed_port_url):
    """The sysroot came from the mirror; the wheel cannot come from the index: nothing of it
    is kept, the sysroot is (the next run fetches only the wheel)."""
    index = closed_port_url("/simple")
    monkeypatch.setenv(sysroot.INDEX_ENV, index)
    with pytest.raises(sysroot.SetupError) as caught:
        sysroot.Fetcher().ensure(["numpy"])
    message = str(caught.value)
    assert message.startswith(f"Cannot fetch the aarch64 wheel numpy==2.4.6 from {index} (")
    assert "cannot reach http://127.0.0.1:" in message and "Connection refused" in message
    assert "needs network access" in message and "\n" not in message
    assert sysroot.is_ready(sysroot.sysroot_dir())
    assert not (cache / "wheels").exists() or not any((cache / "wheels").rglob("*.so"))
    assert not sysroot.is_ready(sysroot.wheel_dir("numpy"))


def _stage(backend: str, tier: str = "device", artifact: str = "stages/s/model.bin") -> dict:
    return {"name": "s", "backend": backend, "tier": tier, "artifact": artifact}


def test_wheels_follow_the_device_stages_and_the_inputs():
    """numpy always; each device stage's backend; a gateway stage's never; Pillow for images."""
    ort_and_gateway = {"stages": [_stage("onnxruntime"), _stage("tvm", tier="gateway")]}
    assert run.wheels_for(ort_and_gateway, [Path("x.npy")]) == ["numpy", "onnxruntime"]
    tflite = {"stages": [_stage("litert", artifact="stages/s/model.tflite")]}
    assert run.wheels_for(tflite, [Path("x.npz"), Path("photo.PNG")]) == [
        "numpy",
        "ai-edge-litert",
        "pillow",
    ]
    for backend in ("edgetpu", "tflite-xnnpack"):  # the Coral's; any other .tflite stage
        stages = {"stages": [_stage(backend, artifact="stages/s/model_edgetpu.tflite")]}
        assert "ai-edge-litert" in run.wheels_for(stages, [Path("x.npy")])
    tvm = {"stages": [_stage("tvm")]}
    assert {"apache-tvm", "apache-tvm-ffi"} <= set(run.wheels_for(tvm, [Path("x.npy")]))


def test_wheel_pins_are_the_versions_edgec_is_tested_with():
    """Each pinned aarch64 wheel that constraints.txt also pins has the same version there."""
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==")
            pins[name.lower().replace("_", "-")] = version.strip()
    shared = set(sysroot.WHEELS) & set(pins)
    assert {"numpy", "onnxruntime", "pillow", "apache-tvm", "apache-tvm-ffi"} <= shared
    assert {name: sysroot.WHEELS[name] for name in shared} == {name: pins[name] for name in shared}
