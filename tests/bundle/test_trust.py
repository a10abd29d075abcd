"""Signed bundles: keygen, sign, verify. Every kind of tampering fails with the right reason."""

from __future__ import annotations

import ast
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from trust_helpers import TEACHER, shared_signed_bundles

from edgec.bundle import io as bundle_io
from edgec.bundle import trust
from edgec.cli import main
from edgec.errors import BadInputError, VerificationError
from edgec.runtime import verify_bundle as standalone


@pytest.fixture(scope="module")
def signed(tmp_path_factory):
    """Keys and three signed bundles of the example teacher (compiled once per session)."""
    return shared_signed_bundles(tmp_path_factory)


@pytest.fixture
def bundle(signed, tmp_path) -> Path:
    """A private copy of a signed bundle that a test may tamper with."""
    copy = tmp_path / "bundle"
    shutil.copytree(signed.bundles[0], copy)
    return copy


def run(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def assert_one_error(result, code: int, fragment: str) -> None:
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    assert fragment in result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), lines


def listed_files(bundle: Path) -> list[str]:
    return sorted(json.loads((bundle / "manifest.json").read_text())["files"])


# ------------------------------------------------------------------------------------ keys
def test_keygen_writes_a_private_key_readable_only_by_its_owner(tmp_path):
    result = run("keygen", tmp_path / "keys")
    assert result.exit_code == 0, result.output
    private, public = tmp_path / "keys" / "edgec.key", tmp_path / "keys" / "edgec.pub"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert b"PRIVATE KEY" in private.read_bytes() and b"PUBLIC KEY" in public.read_bytes()
    key = trust.load_private_key(private)
    assert trust.key_id(key.public_key()) == trust.key_id(trust.load_public_key(public))
    assert trust.key_id(trust.load_public_key(public)) in result.output
    assert not [p for p in private.parent.iterdir() if p.name.endswith(".tmp")]


def test_keygen_refuses_to_overwrite_a_key_without_force(tmp_path):
    trust.generate_keys(tmp_path)
    before = (tmp_path / "edgec.key").read_bytes()
    assert_one_error(run("keygen", tmp_path), 2, "already exists")
    assert (tmp_path / "edgec.key").read_bytes() == before
    assert run("keygen", tmp_path, "--force").exit_code == 0
    assert (tmp_path / "edgec.key").read_bytes() != before


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (None, "does not exist"),
        (b"not a key\n", "not an ed25519 public key"),
        (b"", "not an ed25519 public key"),
    ],
)
def test_verify_with_a_missing_or_malformed_key_file_is_bad_input(
    bundle, tmp_path, content, fragment
):
    key = tmp_path / "key.pub"
    if content is not None:
        key.write_bytes(content)
    assert_one_error(run("verify", bundle, "--key", key), 2, fragment)


def test_verify_refuses_a_private_key_and_sign_refuses_a_public_key(signed, bundle):
    assert_one_error(run("verify", bundle, "--key", signed.private), 2, "is a private key")
    assert_one_error(run("sign", bundle, "--key", signed.public), 2, "is a public key")


def test_a_non_ed25519_key_is_bad_input(bundle, tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    pub = tmp_path / "ec.pub"
    pub.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    assert_one_error(run("verify", bundle, "--key", pub), 2, "not an ed25519 public key")


# ------------------------------------------------------------------------------ verify: ok
def test_a_signed_bundle_verifies_with_its_public_key(signed):
    for path in signed.bundles:
        result = run("verify", path, "--key", signed.public)
        assert result.exit_code == 0, result.output
        assert "signed by key" in result.output
        assert trust.verify_bundle(path, signed.public).manifest_sha256 == (
            standalone.manifest_digest(path)
        )


def test_verify_json_reports_the_verdict(signed, bundle):
    result = run("verify", bundle, "--key", signed.public, "--json")
    data = json.loads(result.output)
    assert result.exit_code == 0 and data["valid"] and data["signature_checked"]
    (bundle / "stages" / "teacher" / "model.onnx").unlink()
    result = run("verify", bundle, "--key", signed.public, "--json")
    data = json.loads(result.output)
    assert result.exit_code == 1 and not data["valid"]
    assert data["problems"] == ["stages/teacher/model.onnx: listed in the manifest but missing"]


def test_without_a_key_only_integrity_is_checked(signed):
    result = run("verify", signed.unsigned)
    assert result.exit_code == 0 and "signature not checked" in result.output


# -------------------------------------------------------------------------- verify: tamper
def flip_middle_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def test_flipping_one_byte_in_any_file_fails_with_the_right_reason(signed, tmp_path):
    """Each listed file names itself and both hashes; the manifest and signature break the
    signature."""
    names = listed_files(signed.bundles[0])
    assert {"stages/teacher/model.onnx", "stages/teacher/model.ort.onnx"} <= set(names)
    assert "report/report.md" in names
    for rel in [*names, "manifest.json", "manifest.sig"]:
        copy = tmp_path / rel.replace("/", "_")
        shutil.copytree(signed.bundles[0], copy)
        expected = standalone.sha256_file(copy / rel)
        flip_middle_byte(copy / rel)
        problems = trust.verify_bundle(copy, signed.public).problems
        if rel in names:
            actual = standalone.sha256_file(copy / rel)
            assert problems == (f"{rel}: sha256 expected {expected}, got {actual}",), rel
        else:
            assert problems[0].startswith("manifest.sig does not match manifest.json"), rel
    cli = run("verify", tmp_path / "report_report.md", "--key", signed.public)
    assert_one_error(cli, 1, "report/report.md: sha256 expected ")


def test_truncating_a_file_reports_sizes_and_hashes(signed, bundle):
    path = bundle / "stages" / "teacher" / "model.onnx"
    size = path.stat().st_size
    path.write_bytes(path.read_bytes()[:100])
    (problem,) = trust.verify_bundle(bundle, signed.public).problems
    assert problem.startswith(f"stages/teacher/model.onnx: expected {size} bytes with sha256 ")
    assert "found 100 bytes" in problem


def test_adding_a_file_fails(signed, bundle):
    (bundle / "stages" / "teacher" / "backdoor.py").write_text("print('hi')\n")
    result = trust.verify_bundle(bundle, signed.public)
    assert result.problems == (
        "stages/teacher/backdoor.py: present but not listed in the manifest",
    )
    assert_one_error(run("verify", bundle, "--key", signed.public), 1, "backdoor.py")


def test_adding_a_file_in_a_new_directory_fails(signed, bundle):
    (bundle / "plugins").mkdir()
    (bundle / "plugins" / "run.py").write_text("")
    problems = trust.verify_bundle(bundle, signed.public).problems
    assert problems == ("plugins/run.py: present but not listed in the manifest",)


def test_removing_a_file_fails(signed, bundle):
    (bundle / "stages" / "teacher" / "model.ort.onnx").unlink()
    problems = trust.verify_bundle(bundle, signed.public).problems
    assert problems == ("stages/teacher/model.ort.onnx: listed in the manifest but missing",)


def test_removing_the_signature_fails_with_a_key(signed, bundle):
    (bundle / "manifest.sig").unlink()
    problems = trust.verify_bundle(bundle, signed.public).problems
    assert problems == ("manifest.sig is missing: the bundle is not signed",)


def test_removing_the_manifest_fails(signed, bundle):
    (bundle / "manifest.json").unlink()
    assert trust.verify_bundle(bundle, signed.public).problems == ("manifest.json is missing",)
    assert_one_error(run("verify", bundle), 1, "manifest.json is missing")


def test_editing_the_manifest_breaks_the_signature(signed, bundle):
    """A raised accuracy: the files still match, the signature does not."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["stages"][0]["threshold"] = 0.01
    (bundle / "manifest.json").write_bytes(bundle_io.manifest_bytes(manifest))
    problems = trust.verify_bundle(bundle, signed.public).problems
    assert problems == (
        "manifest.sig does not match manifest.json: the manifest was changed after signing "
        "or was signed with another key",
    )
    assert_one_error(run("verify", bundle, "--key", signed.public), 1, "does not match")


def test_a_swapped_model_with_a_rewritten_manifest_fails_only_with_the_key(signed, bundle):
    """The attack the signature exists for: new model, new hashes, old signature."""
    model = bundle / "stages" / "teacher" / "model.onnx"
    model.write_bytes(model.read_bytes() + b"\0")
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["files"] = bundle_io.file_table(bundle)
    (bundle / "manifest.json").write_bytes(bundle_io.manifest_bytes(manifest))
    assert trust.verify_bundle(bundle).valid  # integrity alone cannot tell
    problems = trust.verify_bundle(bundle, signed.public).problems
    assert len(problems) == 1 and problems[0].startswith("manifest.sig does not match")


def test_a_bundle_signed_by_another_key_fails(signed, bundle, tmp_path):
    other_private, other_public = trust.generate_keys(tmp_path / "other")
    assert not trust.verify_bundle(bundle, other_public).valid
    trust.sign_bundle(bundle, other_private)
    assert trust.verify_bundle(bundle, other_public).valid
    assert (
        trust.verify_bundle(bundle, signed.public)
        .problems[0]
        .startswith("manifest.sig does not match")
    )


def test_an_unsigned_bundle_fails_when_a_key_is_required(signed):
    result = run("verify", signed.unsigned, "--key", signed.public)
    assert_one_error(result, 1, "manifest.sig is missing: the bundle is not signed")


def test_a_symlinked_file_fails_even_with_the_same_content(signed, bundle, tmp_path):
    model = bundle / "stages" / "teacher" / "model.onnx"
    outside = tmp_path / "outside.onnx"
    shutil.copy(model, outside)
    model.unlink()
    model.symlink_to(outside)
    problems = trust.verify_bundle(bundle, signed.public).problems
    assert problems == (
        "stages/teacher/model.onnx: is a symbolic link; a bundle holds regular files only",
    )


def test_symlinks_are_refused_without_opening_what_they_point_to(signed, bundle, tmp_path):
    """A listed file and an unlisted one, both links to a FIFO: opening either would block,
    so the verifier finishing (in a subprocess with a timeout) shows it never followed them."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    codec = bundle / "runtime" / "codec.py"
    codec.unlink()
    codec.symlink_to(fifo)
    (bundle / "runtime" / "extra.py").symlink_to(fifo)
    result = subprocess.run(
        [sys.executable, "-m", "edgec", "verify", str(bundle), "--key", str(signed.public)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1, result.stderr
    assert "runtime/codec.py: is a symbolic link" in result.stderr
    assert "runtime/extra.py: present but not listed in the manifest (a symbolic link)" in (
        result.stderr
    )


def test_a_manifest_listing_a_path_outside_the_bundle_fails(signed, bundle, tmp_path):
    """Even when properly signed: a signer's mistake must not read outside the bundle."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["files"]["../secret"] = {"sha256": "0" * 64, "bytes": 1}
    (bundle / "manifest.json").write_bytes(bundle_io.manifest_bytes(manifest))
    (bundle / "manifest.sig").write_bytes(
        trust.load_private_key(signed.private).sign((bundle / "manifest.json").read_bytes())
    )
    problems = trust.verify_bundle(bundle, signed.public).problems
    assert problems == ("the manifest lists an invalid path '../secret'",)


def test_every_problem_is_reported_at_once(signed, bundle):
    (bundle / "report" / "report.md").write_text("changed\n")
    (bundle / "stages" / "teacher" / "model.ort.onnx").unlink()
    (bundle / "extra.bin").write_bytes(b"x")
    problems = trust.verify_bundle(bundle, signed.public).problems
    assert len(problems) == 3
    assert [p.split(":")[0] for p in problems] == [
        "report/report.md",
        "stages/teacher/model.ort.onnx",
        "extra.bin",
    ]


def test_verify_on_a_missing_directory_is_bad_input(tmp_path):
    assert_one_error(run("verify", tmp_path / "nope"), 2, "does not exist")


# -------------------------------------------------------------------------------------- sign
def test_sign_then_verify_an_unsigned_bundle(signed, tmp_path):
    copy = tmp_path / "b"
    shutil.copytree(signed.unsigned, copy)
    result = run("sign", copy, "--key", signed.private)
    assert result.exit_code == 0, result.output
    assert len((copy / "manifest.sig").read_bytes()) == 64
    assert run("verify", copy, "--key", signed.public).exit_code == 0


def test_sign_refuses_a_bundle_whose_files_do_not_match(signed, bundle):
    (bundle / "manifest.sig").unlink()
    (bundle / "report" / "report.md").write_text("changed\n")
    assert_one_error(run("sign", bundle, "--key", signed.private), 1, "report/report.md")
    assert not (bundle / "manifest.sig").exists()
    with pytest.raises(VerificationError):
        trust.sign_bundle(bundle, signed.private)


def test_signatures_are_deterministic(signed, bundle):
    before = (bundle / "manifest.sig").read_bytes()
    trust.sign_bundle(bundle, signed.private)
    assert (bundle / "manifest.sig").read_bytes() == before


# ---------------------------------------------------------------------------------- compile
def test_compile_with_a_bad_sign_key_fails_fast_and_writes_nothing(tmp_path):
    bad = tmp_path / "bad.key"
    bad.write_text("nope\n")
    out = tmp_path / "out"
    result = run("compile", TEACHER, "-t", "raspberry-pi-4", "-o", out, "--sign-key", bad)
    assert_one_error(result, 2, "not an unencrypted PEM private key")
    assert not out.exists() and not list(tmp_path.glob(".out*"))


def test_compile_with_sign_key_reports_the_key_and_signs_inside_staging(signed, tmp_path):
    out = tmp_path / "signed"
    result = run(
        "compile", TEACHER, "-t", "raspberry-pi-4", "-o", out, "--sign-key", signed.private,
        "--json", "--archive",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    kid = trust.key_id(trust.load_public_key(signed.public))
    assert json.loads(result.output)["signed_by"] == kid
    assert trust.verify_bundle(out, signed.public).valid
    import tarfile

    with tarfile.open(tmp_path / "signed.tar.gz") as tar:
        assert "signed/manifest.sig" in tar.getnames()


def test_sign_key_given_to_the_api_as_a_missing_path_is_bad_input(tmp_path):
    from edgec.compiler import compile_model
    from edgec.config import CompileConfig

    config = CompileConfig(
        model=TEACHER, target="raspberry-pi-4", output=tmp_path / "o", sign_key=tmp_path / "k"
    )
    with pytest.raises(BadInputError, match="does not exist"):
        compile_model(config)


# ----------------------------------------------------------------------- standalone module
def test_standalone_verifier_imports_only_stdlib_and_cryptography():
    """The runtime generator copies it into bundles: it must not need edgec."""
    tree = ast.parse(Path(standalone.__file__).read_text())
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            roots.add((node.module or "").split(".")[0])
    assert roots <= set(sys.stdlib_module_names) | {"cryptography", "__future__"}, roots


def test_standalone_verifier_copied_out_of_edgec_refuses_a_tampered_bundle(
    signed, bundle, tmp_path
):
    shutil.copy(standalone.__file__, tmp_path / "verify_bundle.py")
    code = (
        "import sys, verify_bundle as v\n"
        "key = open(sys.argv[2], 'rb').read()\n"
        "try:\n"
        "    v.verify_bundle(sys.argv[1], key)\n"
        "except v.BundleVerificationError as err:\n"
        "    print(err); sys.exit(1)\n"
        "assert not [m for m in sys.modules if m.startswith('edgec')]\n"
        "print('ok')\n"
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    command = [sys.executable, "-c", code, str(bundle), str(signed.public)]
    ok = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True)
    assert ok.returncode == 0 and ok.stdout.strip() == "ok", ok.stderr
    (bundle / "stages" / "teacher" / "model.onnx").write_bytes(b"evil")
    bad = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True)
    assert bad.returncode == 1 and "stages/teacher/model.onnx" in bad.stdout


def test_standalone_verifier_accepts_a_raw_32_byte_public_key(signed, bundle):
    from cryptography.hazmat.primitives import serialization

    raw = trust.load_public_key(signed.public).public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    assert standalone.verify_bundle(bundle, raw)["schema"] == "edgec.bundle/1"
    with pytest.raises(ValueError):
        standalone.load_public_key(b"short")
