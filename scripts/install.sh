#!/usr/bin/env bash
# Installs everything the harness needs on Debian 12: build dependencies of the
# 2012 qemu-kvm tree, Debian's QEMU (a peer variant and the test QEMU), fio, the
# guest's packages' tools, and the Python package in .venv.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  build-essential gcc-multilib pkg-config git python3 python3-venv
  libglib2.0-dev zlib1g-dev libaio-dev
  qemu-system-x86 qemu-utils fio busybox-static openssh-client openssh-server
  openssh-sftp-server
  cpio zstd xz-utils kmod
)
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "install.sh: installing ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# apt-get download (the guest's kernel and dropbear) needs the package lists.
if [ -z "$(ls -A /var/lib/apt/lists 2>/dev/null | grep -v lock)" ]; then
  $SUDO apt-get update -qq
fi
python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip >/dev/null
.venv/bin/pip install -q -e '.[test]'
echo "install.sh: ready (.venv/bin/harness)"
