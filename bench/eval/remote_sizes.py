"""Remote physical reads of growing size, timed inside the client's network namespace (run
by scaling.py). Reads {"vm", "sizes", "n"} on stdin; the inventory comes from
$CLOUDVMI_INVENTORY. Prints one JSON list."""

import json
import statistics
import sys
import time

from cloudvmi.remote.inventory import open_target


def main() -> None:
    args = json.loads(sys.stdin.read())
    vm = open_target(args["vm"])
    vm.read_physical(0x100000, 4096)  # connect and attach before timing
    out = []
    for size in args["sizes"]:
        reps = max(3, args["n"] if size <= 1 << 20 else args["n"] // 10)
        times = []
        for _ in range(reps):
            start = time.perf_counter()
            data = vm.read_physical(0x100000, size)
            times.append(time.perf_counter() - start)
            assert len(data) == size
        times.sort()
        median = statistics.median(times)
        out.append({"bytes": size, "latency_s": median,
                    "p99_s": times[min(len(times) - 1, int(len(times) * 0.99))],
                    "mb_s": size / median / 1e6})
    vm.close()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
