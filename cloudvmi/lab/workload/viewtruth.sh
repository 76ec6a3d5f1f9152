#!/bin/sh
# The guest's own view of what CloudVMI's views rebuild from memory, as a gzipped tar on
# stdout (base64 with -b): per process its fd links, fdinfo, maps, environ and mountinfo;
# /proc/net's socket tables; interfaces, addresses and routes; modules.
out=/tmp/viewtruth.$$
rm -rf "$out"
mkdir -p "$out/proc" "$out/net"
for d in /proc/[0-9]*; do
	pid=${d#/proc/}
	[ "$pid" = "$$" ] && continue
	p="$out/proc/$pid"
	mkdir -p "$p/fdinfo"
	cat "$d/maps" > "$p/maps" 2>/dev/null
	cat "$d/environ" > "$p/environ" 2>/dev/null
	cat "$d/mountinfo" > "$p/mountinfo" 2>/dev/null
	cat "$d/status" > "$p/status" 2>/dev/null
	for f in "$d"/fd/*; do
		[ -e "$f" ] || [ -L "$f" ] || continue
		n=${f##*/}
		printf '%s\t%s\n' "$n" "$(readlink "$f")" >> "$p/fd"
		cat "$d/fdinfo/$n" > "$p/fdinfo/$n" 2>/dev/null
	done
done
for t in tcp tcp6 udp udp6 unix raw raw6 route; do cat "/proc/net/$t" > "$out/net/$t" 2>/dev/null; done
ip addr > "$out/net/ip-addr"
ip -6 addr > "$out/net/ip6-addr"
ip route > "$out/net/ip-route"
ip -6 route > "$out/net/ip6-route"
ip link > "$out/net/ip-link"
for i in /sys/class/net/*; do
	n=${i##*/}
	printf '%s %s %s %s %s\n' "$n" "$(cat "$i/ifindex")" "$(cat "$i/address")" \
		"$(cat "$i/mtu")" "$(cat "$i/flags")" >> "$out/net/sysfs"
done
cat /proc/modules > "$out/modules"
ls /sys/module > "$out/sysmodules"
uname -r > "$out/release"
if [ "$1" = "-b" ]; then
	tar czf - -C "$out" . | base64 -w0
else
	tar czf - -C "$out" .
fi
rm -rf "$out"
