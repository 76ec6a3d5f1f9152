"""Loaded kernel modules, from the kernel's `modules` list, as /proc/modules shows them."""

from dataclasses import dataclass

from cloudvmi.capability import Column, view
from cloudvmi.errors import GuestMemoryError
from cloudvmi.os.linux.btf import MemberNotFound
from cloudvmi.os.linux.kernel import LinuxKernel
from cloudvmi.os.linux.records import Record, cstring
from cloudvmi.os.linux.views.common import MAX_MODULES, ListWalkError, ViewResult, list_nodes

STATES = {0: "Live", 1: "Loading", 2: "Unloading", 3: "Unformed"}


@dataclass
class Module:
    name: str
    size: int  # bytes, as /proc/modules counts them
    refcount: int
    state: str
    address: int  # start of the module's core (text)
    struct_address: int


class ModuleReader:
    """Module layouts differ by kernel (core_layout vs mem[]): probed from BTF, not versions."""

    def __init__(self, kernel: LinuxKernel) -> None:
        btf = kernel.btf
        self.kernel = kernel
        mod = btf.struct("module")
        self.list_offset = mod.offset("list")
        fields = {"name": "name", "state": "state", "refcnt": "refcnt.counter"}
        if "mem" in mod:  # one module_memory per type; /proc/modules adds them all up
            mem = mod.field("mem")
            array = btf.type(btf.resolve(mem.type_id))
            self.mem_types = array.nelems
            for i in range(self.mem_types):
                fields[f"size{i}"] = f"mem[{i}].size"
            fields["base"] = "mem[0].base"
        else:
            self.mem_types = 0
            fields.update({"core": "core_layout.size", "init": "init_layout.size",
                           "base": "core_layout.base"})
        self.record = Record(btf, "module", fields, optional=("refcnt",))

    def size(self, m: dict) -> int:
        if self.mem_types:
            return sum(m[f"size{i}"] for i in range(self.mem_types))
        return m["core"] + m["init"]


@view(title="Modules of {vm}", columns=(
    Column("NAME", "name"), Column("SIZE", "size", True), Column("REFS", "refcount", True),
    Column("STATE", "state"), Column("ADDRESS", lambda m: f"{m.address:#x}")))
def modules(kernel: LinuxKernel) -> ViewResult[Module]:
    """List loaded kernel modules, as /proc/modules shows them."""
    try:
        reader = kernel.helper(ModuleReader)
    except MemberNotFound as exc:
        return ViewResult(partial=f"struct module not understood: {exc}")
    head = kernel.symbols.lookup("modules")
    result: ViewResult[Module] = ViewResult()

    try:
        for node in list_nodes(kernel.read_u64, head, MAX_MODULES):
            address = node - reader.list_offset
            try:
                m = reader.record.read(kernel, address)
            except GuestMemoryError as exc:
                result.partial = f"module {address:#x}: {exc}"
                continue
            result.items.append(Module(
                name=cstring(m["name"]).decode("utf-8", "replace"), size=reader.size(m),
                refcount=m.get("refcnt", 1) - 1, state=STATES.get(m["state"], str(m["state"])),
                address=m["base"], struct_address=address,
            ))
    except ListWalkError as exc:
        result.partial = f"module list: {exc.reason}"
    return result
