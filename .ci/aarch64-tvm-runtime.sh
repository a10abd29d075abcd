#!/usr/bin/env bash
# Fetch the aarch64 TVM runtime (libtvm_runtime.so + libtvm_ffi.so, ~5 MB) from the official
# apache-tvm / apache-tvm-ffi aarch64 wheels, at the versions pinned in constraints.txt, into
# DEST (default .venv/aarch64-tvm-runtime). The TVM cross-compilation test runs the Raspberry
# Pi build on it under qemu-aarch64; without it that test skips and says so.
# Idempotent: does nothing when DEST already holds both libraries.
set -euo pipefail
cd "$(dirname "$0")/.."
DEST="${1:-.venv/aarch64-tvm-runtime}"
if [[ -f "$DEST/libtvm_runtime.so" && -f "$DEST/libtvm_ffi.so" ]]; then
  exit 0
fi
PY="${PYTHON:-.venv/bin/python}"
TVM=$(grep -i '^apache-tvm==' constraints.txt | cut -d= -f3)
FFI=$(grep -i '^apache-tvm-ffi==' constraints.txt | cut -d= -f3)
WHEELS=$(mktemp -d)
trap 'rm -rf "$WHEELS"' EXIT
"$PY" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
  --platform manylinux_2_28_aarch64 --dest "$WHEELS" \
  "apache-tvm==$TVM" "apache-tvm-ffi==$FFI"
mkdir -p "$DEST"
"$PY" - "$WHEELS" "$DEST" <<'EOF'
import pathlib, sys, zipfile
wheels, dest = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
wanted = {"tvm/lib/libtvm_runtime.so", "tvm_ffi/lib/libtvm_ffi.so"}
for wheel in wheels.glob("*.whl"):
    with zipfile.ZipFile(wheel) as archive:
        for name in wanted & set(archive.namelist()):
            (dest / pathlib.Path(name).name).write_bytes(archive.read(name))
missing = [n for n in wanted if not (dest / pathlib.Path(n).name).is_file()]
sys.exit(f"not found in the wheels: {missing}" if missing else 0)
EOF
