#!/bin/sh
# The guest's own view of its processes, hex-encoded so any name survives the console:
#   P PID HEX(/proc/PID/stat) HEX(/proc/PID/cmdline)
#   T PID TID HEX(/proc/PID/task/TID/stat)
#   S PID-of-this-script (its children are not part of the workload)
echo "S $$"
hex() { od -An -tx1 -v "$1" 2>/dev/null | tr -d ' \n'; }
for d in /proc/[0-9]*; do
	pid=${d#/proc/}
	s=$(hex "$d/stat")
	[ -n "$s" ] || continue
	echo "P $pid $s $(hex "$d/cmdline")"
	if [ "$1" = "-t" ]; then
		for t in "$d"/task/[0-9]*; do echo "T $pid ${t##*/} $(hex "$t/stat")"; done
	fi
done
