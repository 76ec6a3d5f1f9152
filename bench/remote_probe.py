"""Timings taken inside the client's network namespace (run by bench_remote.py).
Reads {"vm": ..., "n": ...} on stdin; the inventory comes from $CLOUDVMI_INVENTORY."""

import json
import statistics
import sys
import time

from cloudvmi.remote.inventory import load, open_target


def median_ms(fn, n: int) -> float:
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1e3


def main() -> None:
    args = json.loads(sys.stdin.read())
    vm = open_target(args["vm"])
    vm.read_physical(0x100000, 4096)  # connect and attach before timing
    out = {
        "read4k_ms": median_ms(lambda: vm.read_physical(0x100000, 4096), args["n"]),
        "ps_ms": median_ms(vm.linux.processes, args["n"] // 10),
    }
    size = args["bulk_mib"] << 20
    start = time.perf_counter()
    data = vm.read_physical(0, size)
    out["bulk_mb_s"] = len(data) / (time.perf_counter() - start) / 1e6

    def fleet() -> None:
        answers = load().fan_out(lambda node: {v.name: node.vm(v.name).linux.processes()
                                               for v in node.vms()})
        assert not any(isinstance(a, Exception) for a in answers.values()), answers

    out["fleet_ps_ms"] = median_ms(fleet, 5)
    out["fleet_vms"] = sum(len(v) for v in load().fan_out(lambda n: n.vms()).values())
    vm.close()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
