"""Cross-node benchmarks: two agents in their own network namespaces, a real guest behind
each, and the client in a third namespace, over mutual TLS.

Run: .venv/bin/python bench/bench_remote.py   (boots two 6.1 guests, stops everything after)
"""

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))  # the fleet harness

from cloudvmi.memory.mapped import MappedFileMemory  # noqa: E402

from fleet import Fleet  # noqa: E402
from report import Report, summary, timed  # noqa: E402

PROBE = str(Path(__file__).with_name("remote_probe.py"))


def main() -> None:
    report = Report("remote")
    print("CloudVMI cross-node: agents in network namespaces, mutual TLS, real 6.1 guests")
    with tempfile.TemporaryDirectory() as tmp:
        # Idle guests: with the busy loop each TCG guest takes a whole host core of two, and
        # the figures would measure that contention rather than CloudVMI.
        fleet = Fleet(Path(tmp), PROBE, busy=False)
        try:
            fleet.pki()
            fleet.boot()
            local = MappedFileMemory(fleet.guests[0].shm_path)
            local_4k = summary(timed(lambda: local.read(0x100000, 4096), 2000))["median"]
            from cloudvmi.vm import attach

            with attach(fleet.guests[0].name) as vm:
                vm.linux.processes()
                local_ps = summary(timed(vm.linux.processes, 20))["median"]
            for node in fleet.nodes:
                fleet.start_agent(node)
            out = subprocess.run(
                [*fleet.topo.run_in(fleet.topo.client), sys.executable, PROBE],
                input=json.dumps({"vm": "web1@node1", "n": 300, "bulk_mib": 256}),
                capture_output=True, text=True, env=fleet.client_env("ops"), timeout=600)
            if out.returncode != 0:
                raise SystemExit(out.stderr[-3000:])
            r = json.loads(out.stdout.strip().splitlines()[-1])
        finally:
            fleet.close()
    report.add("4 KiB physical read, local (shm mmap)", local_4k * 1e6, "us")
    report.add("4 KiB physical read, remote (TLS, namespaces)", r["read4k_ms"] * 1e3, "us",
               note=f"({r['read4k_ms'] / (local_4k * 1e3):.0f}x local)")
    report.add("process list, local", local_ps * 1e3, "ms")
    report.add("process list, remote", r["ps_ms"], "ms",
               note=f"({r['ps_ms'] / (local_ps * 1e3):.1f}x local)")
    report.add("remote bulk physical read (256 MiB, streamed)", r["bulk_mb_s"], "MB/s",
               ">= 200", r["bulk_mb_s"] >= 200)
    report.add(f"fleet process list, {r['fleet_vms']} VMs on 2 agents", r["fleet_ps_ms"], "ms")
    print(f"saved {report.save()}")


if __name__ == "__main__":
    main()
