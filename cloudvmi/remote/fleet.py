"""Fleet-wide calls: a view on every VM of every node, nodes asked at once and each node's
VMs a few at a time (an agent serves one client a few calls at once: `calls_per_identity`).
A node or a VM that fails gets its own error; the others still answer."""

from concurrent import futures

from cloudvmi.errors import CloudVMIError

PER_NODE = 4  # calls in flight to one node (the agent's default share of one identity)


def view_on_all(inventory, name: str, args: dict, timeout: float | None = None
                ) -> dict[str, object]:
    """node -> ({vm: result or exception}, sorted by VM name), or the node's exception."""

    def on_node(node) -> dict[str, object]:
        vms = sorted(v.name for v in node.vms())
        if not vms:
            return {}

        def one(vm: str):
            try:
                return getattr(node.vm(vm).linux, name)(**args)
            except (CloudVMIError, ValueError) as exc:
                return exc

        with futures.ThreadPoolExecutor(max_workers=min(PER_NODE, len(vms)),
                                        thread_name_prefix="cloudvmi-vm") as pool:
            return dict(zip(vms, pool.map(one, vms), strict=True))

    return inventory.fan_out(on_node, timeout)
