#!/bin/sh
# The guest's own view of its processes, hex-encoded so any name survives the console:
#   P PID HEX(/proc/PID/stat) HEX(/proc/PID/cmdline) UID THREADS HEX(readlink /proc/PID/exe)
#   T PID TID HEX(/proc/PID/task/TID/stat)
#   S PID-of-this-script (its children are not part of the workload)
echo "S $$"
hex() { od -An -tx1 -v "$1" 2>/dev/null | tr -d ' \n'; }
for d in /proc/[0-9]*; do
	pid=${d#/proc/}
	s=$(hex "$d/stat")
	[ -n "$s" ] || continue
	uid=- threads=-
	while read -r key value _; do
		case "$key" in
		Uid:) uid=$value ;;
		Threads:) threads=$value ;;
		esac
	done < "$d/status"
	exe=$(readlink "$d/exe" 2>/dev/null)
	[ -n "$exe" ] && exe=$(printf %s "$exe" | od -An -tx1 -v | tr -d ' \n')
	echo "P $pid $s $(hex "$d/cmdline") $uid $threads $exe"
	if [ "$1" = "-t" ]; then
		for t in "$d"/task/[0-9]*; do echo "T $pid ${t##*/} $(hex "$t/stat")"; done
	fi
done
