#!/usr/bin/env bash
# The system packages the aarch64 TVM tests need, installed with apt when missing: Debian's
# aarch64 cross compiler, the C library it links against (gcc-aarch64-linux-gnu only
# *recommends* libc6-dev-arm64-cross, so with --no-install-recommends it must be named, or
# every link fails on crti.o), and qemu-user to run the result. Without apt, root or
# passwordless sudo it warns and exits 0: those tests then skip and say why.
# Idempotent: does nothing when everything is there.
set -uo pipefail

need=()
if ! command -v aarch64-linux-gnu-gcc >/dev/null; then
  need+=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross)
else
  crti=$(aarch64-linux-gnu-gcc -print-file-name=crti.o 2>/dev/null)
  [[ "$crti" == /* && -f "$crti" ]] || need+=(libc6-dev-arm64-cross)
fi
command -v qemu-aarch64 >/dev/null || need+=(qemu-user)
((${#need[@]})) || exit 0

warn() {
  echo "warning: could not install ${need[*]} ($1); the aarch64 TVM tests will skip" >&2
  exit 0
}
command -v apt-get >/dev/null || warn "no apt-get"
sudo=()
if [[ $(id -u) -ne 0 ]]; then
  command -v sudo >/dev/null && sudo -n true 2>/dev/null || warn "not root, no passwordless sudo"
  sudo=(sudo -n)
fi
echo "installing ${need[*]} (apt-get, --no-install-recommends)"
"${sudo[@]}" apt-get update -qq >/dev/null || warn "apt-get update failed"
DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends \
  "${need[@]}" >/dev/null || warn "apt-get install failed"
echo "installed ${need[*]}"
