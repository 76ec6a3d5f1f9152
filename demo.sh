#!/usr/bin/env bash
# Boot a real demo guest (Debian's Linux 6.1 under QEMU) and show its processes, modules and
# kernel from outside, with no agent inside. KEEP=1 leaves the guest running afterwards.
set -euo pipefail
cd "$(dirname "$0")"
scripts/setup.sh
cvmi=.venv/bin/cloudvmi
name=${DEMO_NAME:-demo}
if ! $cvmi lab ls --json | grep -q "\"name\": \"$name\""; then
	$cvmi lab up "$name" --kernel "${KERNEL:-6.1}"
fi
[ "${KEEP:-0}" = 1 ] || trap '$cvmi lab down "$name"' EXIT
$cvmi info "$name"
$cvmi ps "$name"
$cvmi modules "$name"
echo "The guest's own view, for comparison (ps over its serial console):"
$cvmi lab console "$name" -- ps -o pid,ppid,comm,args | head -n 25
