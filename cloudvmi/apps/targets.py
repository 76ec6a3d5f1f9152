"""Which VMs an application works on: named ones (a lab guest, a QMP socket, VM@NODE) or,
with --all, every VM of every node in the inventory. Each is opened when its turn comes and
closed after, so a long `watch` holds nothing between rounds."""

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

from cloudvmi.errors import CloudVMIError
from cloudvmi.remote.inventory import load, open_target


@dataclass(frozen=True)
class Target:
    name: str  # as the user would write it: "web-1" or "web-1@node2"
    node: str  # "" for a VM of this machine

    @contextlib.contextmanager
    def open(self, writable: bool = True):
        vm = open_target(self.name, writable=writable)
        try:
            yield vm
        finally:
            vm.close()


def resolve(names: list[str], every: bool = False) -> list[Target]:
    """The targets of NAMES, or of every VM of every inventory node when EVERY."""
    if every and names:
        raise CloudVMIError("name VMs or use --all, not both")
    if not every:
        if not names:
            raise CloudVMIError("name at least one VM, or use --all")
        return [Target(n, n.rpartition("@")[2] if "@" in n else "") for n in names]
    answers = load().fan_out(lambda node: [v.name for v in node.vms()])
    targets = []
    for node, answer in answers.items():
        if isinstance(answer, Exception):
            raise CloudVMIError(f"node {node}: {answer}")
        targets += [Target(f"{vm}@{node}", node) for vm in answer]
    return targets


def each(targets: list[Target], writable: bool = True) -> Iterator[tuple[Target, object]]:
    """(target, open VM) for each target in turn."""
    for t in targets:
        with t.open(writable) as vm:
            yield t, vm
