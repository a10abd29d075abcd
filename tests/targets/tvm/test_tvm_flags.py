"""The TVM flags at the edge: device URLs, --tune-trials, --tuning-cache, a missing extra.

None of these needs TVM itself: URL parsing and flag checks happen before anything is built,
and the missing-extra case runs edgec in a subprocess where ``tvm`` cannot be imported.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgec.cli import main
from edgec.errors import BadInputError
from edgec.targets.tvm.rpc import DeviceUrl, parse_device_url


def run(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def assert_one_sentence(result, fragment: str, out_dir: Path) -> None:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert lines[-1].startswith("error: ") and lines[-1].endswith("."), lines
    assert sum(line.startswith("error") for line in lines) == 1, lines
    assert fragment in result.stderr
    assert not out_dir.exists(), "a refused compile must leave no output"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("rpc://127.0.0.1:9090", DeviceUrl("rpc", "127.0.0.1", 9090)),
        ("rpc://pi4.local:9090/", DeviceUrl("rpc", "pi4.local", 9090)),
        ("tracker://10.0.0.2:9190/rasp4", DeviceUrl("tracker", "10.0.0.2", 9190, "rasp4")),
        ("rpc://[::1]:9090", DeviceUrl("rpc", "::1", 9090)),
    ],
)
def test_device_urls_parse(text, expected):
    """rpc://HOST:PORT and tracker://HOST:PORT/KEY parse into host, port and key."""
    assert parse_device_url(text) == expected
    assert parse_device_url(str(expected)) == expected


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("127.0.0.1:9090", "not a device URL"),
        ("http://127.0.0.1:9090", "not a device URL"),
        ("rpc://host", "not a device URL"),
        ("rpc://host:0", "outside 1-65535"),
        ("rpc://host:70000", "outside 1-65535"),
        ("tracker://host:9190", "no device key"),
        ("rpc://host:9090/key", "only applies to trackers"),
    ],
)
def test_bad_device_urls_are_one_clear_sentence(text, fragment):
    """Anything but the two URL forms is refused with a sentence that shows the right form."""
    with pytest.raises(BadInputError, match=fragment) as info:
        parse_device_url(text)
    assert str(info.value).endswith(".") and "\n" not in str(info.value)


def test_compile_with_a_bad_device_url_exits_2_and_writes_nothing(tmp_path, teacher_path):
    """--device checks its URL before any work."""
    out = tmp_path / "b"
    result = run("compile", str(teacher_path), "-t", "host", "-o", str(out), "--device", "pi:1")
    assert_one_sentence(result, "rpc://HOST:PORT", out)


@pytest.mark.parametrize(
    ("flags", "fragment"),
    [
        (["--tune-trials", "-1"], "--tune-trials must be 0 or more"),
        (["--tune-trials", "2", "--backend", "onnxruntime"], "use --backend tvm or auto"),
        (["--device", "rpc://127.0.0.1:9", "--backend", "onnxruntime"], "--device works"),
    ],
)
def test_tvm_flags_with_wrong_values_exit_2(tmp_path, teacher_path, flags, fragment):
    """Tuning flags that cannot apply are refused at the edge."""
    out = tmp_path / "b"
    result = run("compile", str(teacher_path), "-t", "host", "-o", str(out), *flags)
    assert_one_sentence(result, fragment, out)


def test_tuning_cache_that_is_a_file_exits_2(tmp_path, teacher_path):
    """--tuning-cache must be a directory."""
    cache = tmp_path / "cache.json"
    cache.write_text("{}")
    out = tmp_path / "b"
    result = run(
        "compile", str(teacher_path), "-t", "host", "-o", str(out), "--tuning-cache", str(cache)
    )
    assert_one_sentence(result, "is a file", out)


_WITHOUT_TVM = """
import sys
sys.modules["tvm"] = None  # as if the tvm extra were not installed
sys.modules["tvm_ffi"] = None
from edgec.cli import main
main(sys.argv[1:])
"""


def _edgec_without_tvm(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", _WITHOUT_TVM, *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_missing_tvm_extra_is_reported_with_the_install_command(tmp_path, teacher_path):
    """Without TVM, `edgec targets` says how to install it and --backend tvm exits 2."""
    listing = _edgec_without_tvm("targets", "--json")
    assert listing.returncode == 0, listing.stderr
    pi = {t["name"]: t for t in json.loads(listing.stdout)}["raspberry-pi-4"]
    assert pi["backends"]["tvm"]["usable"] is False
    assert "pip install 'edgec[tvm]'" in pi["backends"]["tvm"]["why"]
    out = tmp_path / "b"
    built = _edgec_without_tvm(
        "compile", str(teacher_path), "-t", "host", "-o", str(out), "--backend", "tvm"
    )
    assert built.returncode == 2, built.stderr
    assert "Traceback" not in built.stderr
    assert "pip install 'edgec[tvm]'" in built.stderr
    assert not out.exists()
