"""Timings of fleet commands taken inside the client's network namespace (run by
bench_fleet.py). Reads {"runs": N} on stdin; the inventory comes from $CLOUDVMI_INVENTORY.
Prints one JSON object."""

import json
import statistics
import subprocess
import sys
import time
from concurrent import futures

from cloudvmi.remote.fleet import view_on_all
from cloudvmi.remote.inventory import load

CLI = [sys.executable, "-m", "cloudvmi.cli.main"]


def cli_seconds(*args: str) -> tuple[float, int, str]:
    """Wall-clock seconds of one CLI command (a new process: imports, inventory, TLS)."""
    start = time.perf_counter()
    out = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=600)
    return time.perf_counter() - start, out.returncode, out.stdout


def listing_seconds(nodes: list) -> list[float]:
    """Seconds each node takes to list its VMs, all nodes at once."""
    def one(node):
        start = time.perf_counter()
        node.vms()
        return time.perf_counter() - start

    with futures.ThreadPoolExecutor(len(nodes)) as pool:
        return list(pool.map(one, nodes))


def main() -> None:
    runs = json.loads(sys.stdin.read())["runs"]
    out: dict = {}
    # The first fleet process list after the agents start: they attach every VM then.
    seconds, code, text = cli_seconds("ps", "--all", "--json")
    answer = json.loads(text)
    out["first_ps_s"] = seconds
    out["vms"] = sum(len(v) for v in answer.values() if "error" not in v)
    out["processes"] = sum(len(r["items"]) for v in answer.values() if "error" not in v
                           for r in v.values() if "items" in r)
    out["errors"] = [f"{n}: {v['error']}" for n, v in answer.items() if "error" in v]
    out["first_ps_code"] = code
    out["ps_cli_s"] = [cli_seconds("ps", "--all", "--json")[0] for _ in range(runs)]
    out["vms_cli_s"] = [cli_seconds("vms", "--json")[0] for _ in range(runs)]

    inventory = load()
    per_node: dict[str, list[float]] = {n: [] for n in inventory.nodes}
    api = []
    for _ in range(runs):
        start = time.perf_counter()
        done = {}

        def on_node(node, done=done):
            t = time.perf_counter()
            result = {v.name: node.vm(v.name).linux.processes() for v in node.vms()}
            done[node.name] = time.perf_counter() - t
            return result

        inventory.fan_out(on_node)
        api.append(time.perf_counter() - start)
        for n, s in done.items():
            per_node[n].append(s)
    out["ps_api_serial_s"] = api  # each node's VMs one after another
    concurrent = []
    for _ in range(runs):
        start = time.perf_counter()
        view_on_all(inventory, "processes", {})
        concurrent.append(time.perf_counter() - start)
    out["ps_api_s"] = concurrent
    out["per_node_s"] = {n: statistics.median(s) for n, s in per_node.items() if s}

    # Connection setup: a listing on new channels (TCP + mutual TLS handshake) against the
    # same on channels already connected.
    fresh, reused = [], []
    for _ in range(runs):
        nodes = [inventory.node(n) for n in inventory.nodes]
        start = time.perf_counter()
        listing_seconds(nodes)
        fresh.append(time.perf_counter() - start)
        start = time.perf_counter()
        listing_seconds(nodes)
        reused.append(time.perf_counter() - start)
        for node in nodes:
            node.close()
    out["list_fresh_s"], out["list_reused_s"] = fresh, reused
    print(json.dumps(out))


if __name__ == "__main__":
    main()
