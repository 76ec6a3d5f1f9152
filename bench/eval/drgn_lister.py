"""drgn's view of a kernel dump, as one JSON line: run by peers.py as its own process, so its
time and memory are drgn's (start-up and debug-info loading included).

argv: DUMP VMLINUX VMCOREINFO_FILE LISTING (processes | modules)

The dump is QEMU's, taken without `-device vmcoreinfo`, so it has no VMCOREINFO note: the
kernel's own note, read from guest RAM, is handed to drgn (Program(vmcoreinfo=...)).
"""

import json
import sys

import drgn
from drgn.helpers.linux.module import for_each_module
from drgn.helpers.linux.pid import for_each_task


def main() -> None:
    core, vmlinux, info, listing = sys.argv[1:5]
    with open(info, "rb") as f:
        prog = drgn.Program(vmcoreinfo=f.read())
    prog.set_core_dump(core)
    prog.load_debug_info([vmlinux], main=True)
    if listing == "processes":
        rows = [{"pid": t.pid.value_(), "ppid": t.real_parent.pid.value_(),
                 "comm": t.comm.string_().decode(errors="replace")} for t in for_each_task(prog)]
    elif listing == "modules":
        rows = [{"name": m.name.string_().decode(errors="replace")}
                for m in for_each_module(prog)]
    else:
        raise SystemExit(f"unknown listing {listing!r}")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
