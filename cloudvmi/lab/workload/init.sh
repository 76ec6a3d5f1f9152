#!/bin/sh
# CloudVMI lab guest init: mount, start the known workload, then a root shell on the
# console the kernel command line names (ttyS0 on x86-64, ttyAMA0 on arm64).
export PATH=/bin:/sbin
[ -e /bin/mount ] || /bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
mkdir -p /tmp /run/held
mount -t tmpfs tmp /tmp
ip link set lo up
dmesg -n 1
for m in /lib/modules/*.ko; do [ -e "$m" ] && insmod "$m"; done

extra=0
busy=1
tty=/dev/ttyS0
for arg in $(cat /proc/cmdline); do
	case "$arg" in
	console=*) tty="/dev/${arg#console=}"; tty="${tty%%,*}" ;;
	cloudvmi.extra=*) extra="${arg#cloudvmi.extra=}" ;;
	cloudvmi.busy=*) busy="${arg#cloudvmi.busy=}" ;;
	esac
done

# Long-lived processes, some with names and arguments that are hard to print.
sleep 1000000 &
sleep 2000000 &
sh -c 'printf "odd (name) ü" > /proc/self/comm; while :; do sleep 3600; done' \
	odd 'arg with spaces' '(paren)' 'ünïcödé' &
sh -c 'while :; do sleep 3600; done' long $(yes abcdefghij | head -n 1000 | tr -d '\n') &
sh -c 'while :; do sleep 3600; done' empty-args '' middle '' &
# Arguments a terminal or a markup parser would act on: markup tags, escape sequences.
sh -c 'while :; do sleep 3600; done' hostile '[/x]' '[bold]b' "$(printf '\033[2J\033]0;t\007')" &
# A zombie: the child exits and its parent (now sleep) never waits for it.
sh -c 'sleep 0 & exec sleep 3000000' &
/bin/workload threads 3 &
/bin/workload files /run/held &
/bin/workload listen 8080 &
# Hundreds of descriptors of every kind, sockets of every family, an environment to read.
mkdir -p /run/many
env WL_MARK=env-view 'WL_ODD=a b=c' /bin/workload fds 500 /run/many &
/bin/workload net 9000 &
# An interface with IPv4 and IPv6 addresses and a route through it (dummy.ko made dummy0).
if ip link set dummy0 up 2>/dev/null; then
	ip addr add 10.9.8.7/24 dev dummy0
	ip addr add fd00:9::7/64 dev dummy0
	ip route add 192.168.77.0/24 via 10.9.8.1
fi
# Processes that check their own state (a counter and the clock) for writable-VMI tests.
/bin/workload counter >/tmp/counter.log 2>&1 &
/bin/workload user 1000 >/tmp/user.log 2>&1 &
/bin/workload signals /tmp/signals.txt &
# A busy loop, at the lowest priority so the console stays responsive.
if [ "$busy" = 1 ]; then
	sh -c 'while :; do :; done' busy &
	renice -n 19 -p $! >/dev/null
fi
i=0
while [ "$i" -lt "$extra" ]; do sleep 5000000 & i=$((i + 1)); done

echo "cloudvmi-lab: workload started"
# PID 1 must never exit: respawn the console shell whenever it ends.
while :; do setsid sh -c "exec sh <$tty >$tty 2>&1"; done
