#!/usr/bin/env bash
# Boot a real demo guest (Debian's Linux 6.1 under QEMU) and show its processes, modules and
# kernel from outside, with no agent inside, then its open files, network, kernel integrity,
# host programs run against it and a hunt for hidden objects. KEEP=1 leaves it running.
set -euo pipefail
cd "$(dirname "$0")"
scripts/setup.sh
cvmi=.venv/bin/cloudvmi
name=${DEMO_NAME:-demo}
if ! $cvmi lab ls --json | grep -q "\"name\": \"$name\""; then
	$cvmi lab up "$name" --kernel "${KERNEL:-6.1}"
fi
[ "${KEEP:-0}" = 1 ] || trap '$cvmi lab down "$name"; rm -f /tmp/cloudvmi-demo.txt' EXIT
$cvmi info "$name"
$cvmi ps "$name"
$cvmi modules "$name"
echo "The guest's own view, for comparison (ps over its serial console):"
$cvmi lab console "$name" -- ps -o pid,ppid,comm,args | head -n 25
echo
echo "Changing the guest from outside (system calls run inside it by a hijacked thread):"
$cvmi sysctl "$name" kernel.hostname=changed-from-outside
echo "written from outside" > /tmp/cloudvmi-demo.txt
$cvmi put "$name" /tmp/cloudvmi-demo.txt /tmp/hello.txt
$cvmi run "$name" -- /bin/sh -c 'echo "guest says: $(hostname): $(cat /tmp/hello.txt)"'
echo
echo "What a process holds, the network, and the kernel checked against itself, from memory:"
$cvmi files "$name" --pid 1
$cvmi ifaces "$name"
$cvmi routes "$name"
$cvmi integrity-checks "$name"
echo
echo "Host programs run against the guest (their system calls on guest state made inside it):"
$cvmi exec "$name" -- uname -snrm
$cvmi exec "$name" --channel persistent -- ls -la /etc
echo
echo "Hidden processes, modules, sockets and kernel tampering, by comparing views:"
$cvmi hunt "$name"
