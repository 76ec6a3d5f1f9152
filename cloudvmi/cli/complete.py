"""Shell completion of VM names: running VMs the finders know (lab guests, ...), VM@NODE
with the inventory's nodes, and files (dumps, QMP sockets). Completion runs on every Tab,
so it reads only local state and never contacts an agent or fails."""

from typing import TYPE_CHECKING

import click

from cloudvmi.errors import CloudVMIError

if TYPE_CHECKING:
    from click.shell_completion import CompletionItem


def _running() -> list[str]:
    from cloudvmi.control import discovery

    return sorted({f.name for f in discovery.running()})


def _nodes() -> list[str]:
    from cloudvmi.remote.inventory import load

    return sorted(load().nodes)


def complete_vm(ctx: click.Context, param: click.Parameter,
                incomplete: str) -> list["CompletionItem"]:
    from click.shell_completion import CompletionItem

    items: list[CompletionItem] = []
    try:
        if "@" in incomplete:
            vm, _, node = incomplete.rpartition("@")
            items += [CompletionItem(f"{vm}@{n}") for n in _nodes() if n.startswith(node)]
        else:
            items += [CompletionItem(n, help="running VM") for n in _running()
                      if n.startswith(incomplete)]
    except (CloudVMIError, OSError, ValueError):
        pass
    if "@" not in incomplete:
        items.append(CompletionItem(incomplete, type="file"))
    return items


VM_NAME = {"shell_complete": complete_vm}
"""Keyword arguments of a click argument that names a VM."""
