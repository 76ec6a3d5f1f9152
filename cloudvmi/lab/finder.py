"""The lab as a finder of VMs (entry point `cloudvmi.finders`: lab): lab guests by name."""

from cloudvmi.control.discovery import Found
from cloudvmi.errors import CloudVMIError
from cloudvmi.lab import guest as lab


def _found(g: lab.LabGuest) -> Found:
    return Found(g.name, "lab", str(g.qmp_path), g.gdb_socket,
                 g.meta.get("release", ""), symbols=g.meta.get("symbols"),
                 arch=g.meta.get("arch", "x86_64"))


def find(name: str, strict: bool = False) -> Found | None:
    try:
        g = lab.get(name)
    except CloudVMIError:
        return None
    if not g.running():
        raise CloudVMIError(f"lab guest {name!r} is not running")
    return _found(g)


def running() -> list[Found]:
    return [_found(g) for g in lab.list_guests() if g.running()]
