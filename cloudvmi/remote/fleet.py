"""Fleet-wide calls: a view on every VM of every node, nodes asked at once and each node's
VMs a few at a time (an agent serves one client a few calls at once: `calls_per_identity`).
A node or a VM that fails gets its own error; the others still answer."""

import threading
from collections.abc import Callable
from concurrent import futures

from cloudvmi.errors import CloudVMIError

PER_NODE = 4  # calls in flight to one node (the agent's default share of one identity)


def view_on_all(inventory, name: str, args: dict, timeout: float | None = None,
                progress: Callable[[int, int | None], None] | None = None
                ) -> dict[str, object]:
    """node -> ({vm: result or exception}, sorted by VM name), or the node's exception.
    PROGRESS(done, total) is called as VMs answer (total: the VMs listed so far)."""
    counts = {"done": 0, "total": 0}
    lock = threading.Lock()

    def tick(done: int = 0, total: int = 0) -> None:
        if progress is not None:
            with lock:
                counts["done"] += done
                counts["total"] += total
                progress(counts["done"], counts["total"])

    def on_node(node) -> dict[str, object]:
        vms = sorted(v.name for v in node.vms())
        tick(total=len(vms))
        if not vms:
            return {}

        def one(vm: str):
            try:
                return getattr(node.vm(vm).linux, name)(**args)
            except (CloudVMIError, ValueError) as exc:
                return exc
            finally:
                tick(done=1)

        with futures.ThreadPoolExecutor(max_workers=min(PER_NODE, len(vms)),
                                        thread_name_prefix="cloudvmi-vm") as pool:
            return dict(zip(vms, pool.map(one, vms), strict=True))

    return inventory.fan_out(on_node, timeout)
