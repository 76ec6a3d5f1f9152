#!/usr/bin/env bash
# Install what CloudVMI needs on a fresh Debian machine (as root): host packages, then the
# Python package and its test tools in a virtual environment (.venv). Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(qemu-system-x86 qemu-system-arm qemu-user gcc-aarch64-linux-gnu libc6-dev-arm64-cross busybox-static cpio gcc libc6-dev dpkg-dev iproute2 procps coreutils passwd ca-certificates dwarves xz-utils
	libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients libvirt-dev pkg-config python3-dev util-linux)
missing=()
for p in "${packages[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c 'import ensurepip' 2>/dev/null; then
	missing+=(python3-venv)
fi
if [ ${#missing[@]} -gt 0 ]; then
	echo "setup: installing ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -q >/dev/null
	apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi

# libvirtd's QEMU driver looks up its built-in QEMU user at start, even when qemu.conf names
# another: libvirt-daemon-system would create it (with systemd units this machine needs not).
if ! getent passwd libvirt-qemu >/dev/null; then
	useradd --system --user-group --no-create-home --home-dir /var/lib/libvirt \
		--shell /usr/sbin/nologin libvirt-qemu
fi

if [ ! -x .venv/bin/python ]; then
	python3 -m venv .venv
fi
stamp=.venv/.cloudvmi-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
	.venv/bin/python -m pip install -q --upgrade pip >/dev/null
	.venv/bin/python -m pip install -q -e '.[test]'
	touch "$stamp"
fi
