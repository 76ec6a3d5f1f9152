"""CloudVMI beside other VMI tools on the same memory, in the same run.

- Volatility 3 (its own `vol` program, with the ISF `cloudvmi isf` makes from the guest's BTF)
  and drgn (with the DWARF vmlinux of Debian's -dbg package and the kernel's own VMCOREINFO)
  list processes, modules and sockets of one dump of a 4-level guest (Volatility 3 walks
  4-level page tables only); CloudVMI's CLI lists the same dump. Each tool is a process of
  its own: wall time and peak RSS, and what it found against the guest's own /proc.
- In-guest tools (busybox ps, ls, cat run inside the same guest) are the baseline of `exec`
  and of the guest operations.
- Published figures of systems that cannot be run here are quoted, labelled as such.
"""

import json
import os
import time
from pathlib import Path

from cloudvmi.lab import kernels
from cloudvmi.os.linux.vmcoreinfo import find_vmcoreinfo
from cloudvmi.vm import attach

from .common import (
    CLI,
    VOL,
    Settings,
    dump,
    env_with,
    guest_pids,
    in_guest_seconds,
    measure,
    samples,
    stats,
)

LISTINGS = ("processes", "modules", "sockets")
VOL_PLUGIN = {"processes": "linux.pslist", "modules": "linux.lsmod",
              "sockets": "linux.sockstat"}
CLOUDVMI_COMMAND = {"processes": "ps", "modules": "modules", "sockets": "sockets"}
DRGN_LISTER = str(Path(__file__).with_name("drgn_lister.py"))

# Figures of systems whose code cannot be run here, as their authors published them.
PUBLISHED = [
    {"system": "HyperShell", "figure": "in-VM management utilities run from the hypervisor, "
     "against their native in-VM execution (over one hundred utilities)",
     "value": "2.73x slowdown on average",
     "source": "Fu, Zeng, Lin. HyperShell: A Practical Hypervisor Layer Guest OS Shell for "
     "Automated In-VM Management. USENIX ATC 2014 (abstract)",
     "url": "https://www.usenix.org/conference/atc14/technical-sessions/presentation/fu",
     "compare": "exec ratio"},
    {"system": "HyperShell", "figure": "overhead to the guest OS kernel",
     "value": "less than 5%",
     "source": "Fu, Zeng, Lin. USENIX ATC 2014 (abstract)",
     "url": "https://www.usenix.org/conference/atc14/technical-sessions/presentation/fu",
     "compare": "guest-side overhead"},
    {"system": "VMST and other binary-code-reuse VMI",
     "figure": "introspection tools (ps, lsmod, netstat) run on redirected kernel data",
     "value": "up to hundreds of times slowdown (as characterised by its authors' follow-up)",
     "source": "Saberi, Fu, Lin. Hybrid-Bridge: Efficiently Bridging the Semantic Gap in "
     "Virtual Machine Introspection via Decoupled Execution and Training Memoization. "
     "NDSS 2014 (abstract); VMST: Fu, Lin. IEEE S&P 2012",
     "url": "https://vdocuments.net/hybrid-bridge-efciently-bridging-the-semantic-gap-in-.html",
     "compare": "exec ratio"},
    {"system": "ShadowContext", "figure": "-", "value": "not quoted: no published figure "
     "could be found and checked for this document", "source": "Wu, Fu, Lin, Luo. DSN 2014",
     "url": "", "compare": ""},
]

EXEC_COMMANDS = [  # (label, host argv through exec, the same inside the guest)
    ("ps", ["busybox", "ps"], "busybox ps"),
    ("ls -l /etc", ["busybox", "ls", "-l", "/etc"], "busybox ls -l /etc"),
    ("cat /etc/passwd", ["busybox", "cat", "/etc/passwd"], "busybox cat /etc/passwd"),
]


def run(s: Settings) -> dict:
    with s.guest(kernel="6.1", mem="256M", paging=4) as g:
        truth, image = _capture(s, g)
        tools = _cloudvmi(s, image) + _volatility(s, image) + _drgn(s, g, image)
        for row in tools:
            row.update(_score(row.pop("keys", None), row["listing"], truth))
        exec_rows, op_rows = _in_guest_baselines(s, g)
    image.unlink()
    return {"guest": {"kernel": g.meta["release"], "mem_mib": g.meta["mem_mib"],
                      "paging": 4},
            "truth": {k: len(v) for k, v in truth.items() if k != "pids_after"},
            "tools": tools, "exec": exec_rows, "operations": op_rows,
            "published": PUBLISHED}


def _capture(s: Settings, g) -> tuple[dict, Path]:
    """The guest's own view just before and after its dump."""
    before = guest_pids(g)
    modules = {line.split()[0] for line in g.console.check("cat /proc/modules").splitlines()
               if line.strip()}
    sockets = _proc_net(g.console.check(
        "for f in tcp tcp6 udp udp6; do echo \"== $f\"; cat /proc/net/$f; done"))
    image = dump(g, s.work / "peers.elf")
    after = guest_pids(g)
    # Pids alive on both sides of the dump are surely in it; others may or may not be.
    return {"processes": before & after, "pids_seen": before | after, "modules": modules,
            "sockets": sockets}, image


def _proc_net(text: str) -> set[tuple]:
    """(protocol, local port, remote port) of every inet socket /proc/net lists."""
    out, proto = set(), ""
    for line in text.splitlines():
        f = line.split()
        if line.startswith("== "):
            proto = f[1].rstrip("6")
        elif len(f) > 3 and ":" in f[1] and f[0].endswith(":"):
            out.add((proto, int(f[1].rsplit(":", 1)[1], 16), int(f[2].rsplit(":", 1)[1], 16)))
    return out


def _keys(listing: str, rows: list[dict], tool: str) -> set:
    if listing == "processes":
        return {int(r["PID"] if tool == "Volatility 3" else r["pid"]) for r in rows}
    if listing == "modules":
        # Volatility 3 names the column "Module Name" since 2.26, "Name" before
        return {r.get("Module Name", r.get("Name")) if tool == "Volatility 3" else r["name"]
                for r in rows}
    if tool == "Volatility 3":
        return {(str(r.get("Proto", "")).lower().rstrip("6"), int(r["Source Port"] or 0),
                 int(r["Destination Port"] or 0)) for r in rows
                if str(r.get("Proto", "")).lower().startswith(("tcp", "udp"))}
    return {(r["protocol"], r["local_port"], r["remote_port"]) for r in rows
            if r["protocol"] in ("tcp", "udp")}


def _score(keys: set | None, listing: str, truth: dict) -> dict:
    """What a tool found against the guest's own view: recall (of what the guest shows, the
    share the tool found) and extra (found, but never shown by the guest)."""
    if keys is None:
        return {"found": None, "recall": None, "extra": None}
    want = truth[listing]
    seen = truth["pids_seen"] if listing == "processes" else want
    return {"found": len(keys), "recall": len(keys & want) / len(want) if want else None,
            "extra": len(keys - seen)}


def _flat(rows: list[dict]) -> list[dict]:
    """Volatility's JSON rows with their __children (tree plugins) brought up."""
    out = []
    for r in rows:
        out.append(r)
        out += _flat(r.get("__children", []))
    return out


def _row(tool: str, listing: str, run: str, m, rows: list[dict] | None, note: str = "") -> dict:
    return {"tool": tool, "listing": listing, "run": run, "seconds": m.seconds,
            "rss_mib": m.rss_mib, "ok": m.status == 0 and rows is not None,
            "keys": _keys(listing, rows, tool) if rows is not None else None,
            "note": note if m.status == 0 else (note + " " + m.stderr[-300:]).strip()}


def _cloudvmi(s: Settings, image: Path) -> list[dict]:
    out = []
    cache = s.work / "peers-cvmi-cache"
    for listing in s.pick(("processes",), LISTINGS):
        for run in s.pick(("warm",), ("cold", "warm")):
            if run == "cold":
                cache = s.work / f"peers-cvmi-{listing}"
            m = measure([*CLI, CLOUDVMI_COMMAND[listing], str(image), "--json"],
                        env_with(CLOUDVMI_CACHE=str(cache)))
            rows = json.loads(m.stdout)["items"] if m.status == 0 else None
            out.append(_row("CloudVMI", listing, run, m, rows,
                            "profile from the guest's memory" if run == "cold" else
                            "profile cached"))
    return out


def _volatility(s: Settings, image: Path) -> list[dict]:
    if not os.path.exists(VOL):
        s.log("  Volatility 3 is not installed: its rows are left out")
        return []
    symbols = s.work / "peers-symbols"
    isf = symbols / "linux" / "guest.json.xz"
    isf.parent.mkdir(parents=True, exist_ok=True)
    made = measure([*CLI, "isf", str(image), "-o", str(isf), "--json"],
                   env_with(CLOUDVMI_CACHE=str(s.work / "peers-isf-cache")))
    out = [{"tool": "CloudVMI", "listing": "ISF for Volatility", "run": "cold",
            "seconds": made.seconds, "rss_mib": made.rss_mib, "ok": made.status == 0,
            "keys": None, "note": "`cloudvmi isf`: the symbol table Volatility needs"}]
    if made.status != 0:
        return out
    xdg = s.work / "peers-vol-cache"
    for listing in s.pick(("processes",), LISTINGS):
        for run in s.pick(("cold",), ("cold", "warm")):
            if run == "cold":
                xdg = s.work / f"peers-vol-{listing}"  # a new cache: the ISF indexed anew
            m = measure([VOL, "-q", "--offline", "-s", str(symbols), "-f", str(image),
                         "-r", "json", VOL_PLUGIN[listing]], env_with(XDG_CACHE_HOME=str(xdg)))
            rows = _flat(json.loads(m.stdout)) if m.status == 0 else None
            out.append(_row("Volatility 3", listing, run, m, rows,
                            f"{VOL_PLUGIN[listing]}" + (", ISF checked and indexed"
                                                        if run == "cold" else "")))
    return out


def _drgn(s: Settings, g, image: Path) -> list[dict]:
    try:
        import drgn  # noqa: F401
    except ImportError:
        s.log("  drgn is not installed: its rows are left out")
        return []
    kernel = kernels.fetch(g.meta["kernel"], g.meta["flavour"])
    vmlinux = kernel.vmlinuz.parent / "vmlinux-dbg"
    if not vmlinux.exists():
        if s.quick:
            s.log("  drgn: no DWARF vmlinux cached (the full run downloads it): left out")
            return []
        s.log(f"  downloading linux-image-{kernel.release}-dbg for drgn (~850 MB, once)")
        vmlinux = kernels.debug_vmlinux(kernel)
    with attach(str(image), profile_cache=None) as vm:
        note = next(find_vmcoreinfo(vm.phys), None)
    if note is None:
        s.log("  drgn: the kernel's VMCOREINFO note was not found in the dump: left out")
        return []
    info = s.work / "vmcoreinfo"
    info.write_text("".join(f"{k}={v}\n" for k, v in note.fields.items()))
    out = []
    for listing in ("processes", "modules"):
        m = measure([os.sys.executable, DRGN_LISTER, str(image), str(vmlinux), str(info),
                     listing], env_with())
        rows = json.loads(m.stdout) if m.status == 0 else None
        out.append(_row("drgn", listing, "cold", m, rows, "DWARF vmlinux loaded each run"))
    out.append({"tool": "drgn", "listing": "sockets", "run": "-", "seconds": None,
                "rss_mib": None, "ok": None, "keys": None,
                "note": "not run: drgn has no socket-table helper"})
    return out


def _in_guest_baselines(s: Settings, g) -> tuple[list[dict], list[dict]]:
    """exec and the guest operations against the same work done inside the guest."""
    repeat = s.pick(3, 10)
    exec_rows, op_rows = [], []
    with attach(g.name, writable=True) as vm:
        for label, argv, theirs in EXEC_COMMANDS:
            guest = in_guest_seconds(g, theirs, s.pick(10, 50))
            row = {"command": label, "in_guest_ms": guest * 1e3}
            for channel in ("stop", "persistent"):
                vm.exec(argv, timeout=300, channel=channel)  # learns the start-up
                t = stats(samples(lambda a=argv, c=channel: vm.exec(a, timeout=300, channel=c),
                                  repeat))
                row[f"{channel}_ms"] = t["median"] * 1e3
                row[f"{channel}_ratio"] = t["median"] / guest
            exec_rows.append(row)
        ops = [("cat /etc/passwd", lambda: vm.guest.read_file("/etc/passwd"),
                "cat /etc/passwd"),
               ("ls /etc", lambda: vm.guest.listdir("/etc"), "ls /etc"),
               ("stat /etc/passwd", lambda: vm.guest.stat("/etc/passwd"), "stat /etc/passwd")]
        for label, fn, theirs in ops:
            guest = in_guest_seconds(g, theirs, s.pick(10, 50))
            fn()
            t = stats(samples(fn, repeat * 3))
            op_rows.append({"operation": label, "in_guest_ms": guest * 1e3,
                            "cloudvmi_ms": t["median"] * 1e3,
                            "ratio": t["median"] / guest})
        time.sleep(0)
    return exec_rows, op_rows
