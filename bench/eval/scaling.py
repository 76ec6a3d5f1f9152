"""How CloudVMI's costs grow: process list time against the number of processes, view time
against guest memory, remote latency and throughput against message size, a fleet process
list against the number of VMs, and the distribution of injected system calls. Volatility 3
and drgn run at the same points where they can (the process and memory curves)."""

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from cloudvmi.arch.x86_64.abi import NR
from cloudvmi.lab import kernels
from cloudvmi.os.linux.vmcoreinfo import find_vmcoreinfo
from cloudvmi.vm import attach

from .common import CLI, ROOT, VOL, Settings, dump, env_with, measure, samples, stats

sys.path.insert(0, str(ROOT / "bench"))  # bench_fleet: agents in network namespaces
sys.path.insert(0, str(ROOT / "tests"))  # netns, its topology
from bench_fleet import Bench  # noqa: E402

SIZES_PROBE = str(Path(__file__).with_name("remote_sizes.py"))
DRGN_LISTER = str(Path(__file__).with_name("drgn_lister.py"))


class Peers:
    """Volatility 3 and drgn process lists of dumps of one kernel build (full runs only:
    each point costs a dump and tens of seconds)."""

    def __init__(self, s: Settings, g) -> None:
        self.s = s
        self.symbols: Path | None = None
        self.vmlinux: Path | None = None
        if s.quick:
            return
        if os.path.exists(VOL):
            self.symbols = s.work / "scaling-symbols"
        k = kernels.fetch(g.meta["kernel"], g.meta["flavour"])
        try:
            import drgn  # noqa: F401

            self.vmlinux = kernels.debug_vmlinux(k)
        except ImportError:
            pass

    def run(self, image: Path) -> dict:
        out = {}
        if self.symbols is not None:
            isf = self.symbols / "linux" / "guest.json.xz"
            if not isf.exists():
                isf.parent.mkdir(parents=True, exist_ok=True)
                measure([*CLI, "isf", str(image), "-o", str(isf)], env_with())
            xdg = str(self.s.work / "scaling-vol-cache")
            argv = [VOL, "-q", "--offline", "-s", str(self.symbols), "-f", str(image), "-r",
                    "json", "linux.pslist"]
            measure(argv, env_with(XDG_CACHE_HOME=xdg))  # the ISF indexed: later runs warm
            m = measure(argv, env_with(XDG_CACHE_HOME=xdg))
            out["volatility_s"] = m.seconds if m.status == 0 else None
        if self.vmlinux is not None:
            with attach(str(image), profile_cache=None) as vm:
                note = next(find_vmcoreinfo(vm.phys), None)
            if note is not None:
                info = self.s.work / "scaling-vmcoreinfo"
                info.write_text("".join(f"{k}={v}\n" for k, v in note.fields.items()))
                m = measure([sys.executable, DRGN_LISTER, str(image), str(self.vmlinux),
                             str(info), "processes"], env_with())
                out["drgn_s"] = m.seconds if m.status == 0 else None
        return out


def processes(s: Settings) -> dict:
    """Process list time (paused snapshot, in-process) as processes are added."""
    points = []
    with s.guest(kernel="6.1", mem=s.pick("256M", "2G"), paging=4) as g:
        peers = Peers(s, g)
        with attach(g.name) as vm:
            base = len(vm.linux.processes().items)
        targets = s.pick([base, base + 100], [100, 300, 1000, 3000, 10000])
        for target in targets:
            with attach(g.name) as vm:
                have = len(vm.linux.processes().items)
                if target > have:
                    s.log(f"  spawning {target - have} processes")
                    g.console.check(f"/bin/workload spawn {target - have}", timeout=1800)
                n = len(vm.linux.processes().items)
                t = stats(samples(vm.linux.processes, s.pick(3, 10)))
            point = {"processes": n, "cloudvmi_s": t["median"], "cloudvmi": t}
            if not s.quick:
                image = dump(g, s.work / "scaling.elf")
                point.update(peers.run(image))
                image.unlink()
            points.append(point)
    return {"points": points}


def memory(s: Settings) -> dict:
    """Cold attach to a first process list, and a warm list, against guest memory size."""
    points = []
    for mib in s.pick([256], [256, 512, 1024, 2048, 4096]):
        with s.guest(kernel="6.1", mem=f"{mib}M", paging=4) as g:
            cold = []
            for _ in range(s.pick(1, 3)):
                with tempfile.TemporaryDirectory(dir=s.work) as empty:
                    def first(cache=empty):
                        with attach(g.name, profile_cache=cache) as vm:
                            vm.linux.processes()
                    cold += samples(first, 1)
            with attach(g.name) as vm:
                vm.linux.processes()
                warm = stats(samples(vm.linux.processes, s.pick(3, 10)))
                n = len(vm.linux.processes().items)
            point = {"mem_mib": mib, "processes": n, "cold_s": stats(cold)["median"],
                     "warm_s": warm["median"]}
            if not s.quick:
                image = dump(g, s.work / "memory.elf")
                point.update(Peers(s, g).run(image))
                image.unlink()
            points.append(point)
    return {"points": points}


def _dump_for_agents(s: Settings) -> Path:
    path = s.work / "agents.elf"
    if not path.exists():
        with s.guest(kernel="6.1", mem="256M", paging=4) as g:
            dump(g, path)
    return path


def remote(s: Settings) -> dict:
    """Physical reads of growing size: in-process on the dump, and through an agent in
    another network namespace (mutual TLS) serving the same dump."""
    image = _dump_for_agents(s)
    sizes = s.pick([4096, 1 << 20], [64, 1024, 4096, 16384, 65536, 1 << 18, 1 << 20, 4 << 20,
                                     16 << 20, 64 << 20])
    n = s.pick(5, 50)
    local = []
    with attach(str(image)) as vm:
        for size in sizes:
            reps = max(3, n if size <= 1 << 20 else n // 10)
            t = stats(samples(lambda z=size: vm.read_physical(0x100000, z), reps))
            local.append({"bytes": size, "latency_s": t["median"], "p99_s": t["p99"],
                          "mb_s": size / t["median"] / 1e6})
    with tempfile.TemporaryDirectory(dir=s.work) as tmp:
        bench = Bench(Path(tmp), 1)
        try:
            bench.pki()
            bench.place([str(image)], 1, 0)
            bench.start()
            out = subprocess.run(
                [*bench.topo.run_in(bench.topo.client), sys.executable, SIZES_PROBE],
                input=json.dumps({"vm": "case000@node1", "sizes": sizes, "n": n}),
                capture_output=True, text=True, timeout=1800,
                env={**env_with(), "CLOUDVMI_INVENTORY": str(Path(tmp) / "inventory.toml")})
            if out.returncode != 0:
                raise RuntimeError(f"remote probe failed: {out.stderr[-2000:]}")
            far = json.loads(out.stdout.strip().splitlines()[-1])
        finally:
            bench.close()
    return {"local": local, "remote": far}


def fleet(s: Settings) -> dict:
    """`ps --all` over N VMs (dumps of one guest, each served under its own name) spread
    over up to 10 agents in network namespaces, from a client in another."""
    image = _dump_for_agents(s)
    points = []
    for vms in s.pick([1, 2], [1, 10, 25, 50, 100]):
        agents = s.pick(1, min(10, vms))
        s.log(f"  {vms} VMs on {agents} agents")
        with tempfile.TemporaryDirectory(dir=s.work) as tmp:
            bench = Bench(Path(tmp), agents)
            try:
                bench.pki()
                bench.place([str(image)], vms, 0)
                bench.start()
                r = bench.probe(s.pick(1, 3))
            finally:
                bench.close()
        points.append({"vms": vms, "agents": agents, "found_vms": r["vms"],
                       "processes": r["processes"], "errors": r["errors"],
                       "first_cli_s": r["first_ps_s"],
                       "cli_s": stats(r["ps_cli_s"])["median"],
                       "api_s": stats(r["ps_api_s"])["median"]})
    return {"points": points}


def injection(s: Settings) -> dict:
    """Latency of one injected system call (getpid) in a hijacked thread, and of a whole
    hijack + call + restore."""
    n, cycles = s.pick(200, 10000), s.pick(20, 500)
    with s.guest(kernel="6.1", mem="256M", paging=4) as g, \
            attach(g.name, writable=True) as vm:
        inj = vm.guest.injector
        inj.hijack()
        try:
            inj.syscall(NR["getpid"])
            calls = samples(lambda: inj.syscall(NR["getpid"]), n)
        finally:
            inj.release()

        def cycle():
            inj.hijack()
            try:
                inj.syscall(NR["getpid"])
            finally:
                inj.release()

        whole = samples(cycle, cycles)
    return {"syscall": stats(calls), "cycle": stats(whole),
            "syscall_us": [round(x * 1e6, 1) for x in calls],
            "cycle_us": [round(x * 1e6, 1) for x in whole]}


def run(s: Settings) -> dict:
    out = {}
    for name, fn in (("processes", processes), ("memory", memory), ("injection", injection),
                     ("remote", remote), ("fleet", fleet)):
        s.log(f" scaling: {name}")
        out[name] = fn(s)
    return out
