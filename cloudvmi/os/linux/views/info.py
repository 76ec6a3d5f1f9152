"""The kernel's identity: version, release, command line, uptime, and how it was located."""

import contextlib
from dataclasses import dataclass, field

from cloudvmi.capability import view
from cloudvmi.errors import GuestMemoryError, ProfileError
from cloudvmi.os.linux.btf import MemberNotFound
from cloudvmi.os.linux.kernel import LinuxKernel
from cloudvmi.os.linux.records import Record, cstring
from cloudvmi.os.linux.vmcoreinfo import parse as parse_vmcoreinfo


@dataclass
class KernelInfo:
    architecture: str  # "x86_64" or "arm64"
    version: str  # linux_banner
    release: str  # uname -r
    hostname: str
    cmdline: str
    uptime: float | None  # seconds (CLOCK_BOOTTIME), None if the timekeeper was unreadable
    paging_levels: int
    text_virtual: int
    text_physical: int
    kaslr_virtual_slide: int
    page_offset_base: int
    symbols: int
    btf_types: int
    warm_profile: bool
    types_source: str  # "memory" (the kernel's own BTF) or the file the types came from
    located_by: str  # "vmcoreinfo", "scan" or "cached profile"
    locate_seconds: dict[str, float] = field(default_factory=dict)

    def rows(self) -> list[tuple[str, str]]:
        return [
            ("architecture", self.architecture),
            ("version", self.version), ("release", self.release), ("hostname", self.hostname),
            ("command line", self.cmdline),
            ("uptime", "?" if self.uptime is None else f"{self.uptime:.2f} s"),
            ("paging", f"{self.paging_levels}-level"),
            ("_text", f"{self.text_virtual:#x} (physical {self.text_physical:#x})"),
            ("KASLR slide", f"{self.kaslr_virtual_slide:#x}"),
            ("direct map", f"{self.page_offset_base:#x}"),
            ("profile", f"{self.symbols} symbols, {self.btf_types} BTF types, "
                        f"{'cached' if self.warm_profile else 'built from memory'}"),
            ("types", "the kernel's own BTF" if self.types_source == "memory"
             else self.types_source),
            ("located by", self.located_by),
        ]


def _uptime(kernel: LinuxKernel) -> float | None:
    """CLOCK_BOOTTIME from the timekeeper: monotonic base + offs_boot (tick resolution)."""
    btf = kernel.btf
    # tk_core until 6.14; then timekeeper_data[], whose first entry is the system's
    address = kernel.symbols.get("tk_core") or kernel.symbols.get("timekeeper_data")
    if address is None:
        return None
    try:
        try:  # newer kernels name the wrapper struct
            offset = btf.struct("tk_data").offset("timekeeper")
        except (ProfileError, LookupError):
            seq = btf.sizeof(btf.lookup("seqcount_raw_spinlock_t"))
            offset = (seq + 7) // 8 * 8
        tk = Record(btf, "timekeeper", {"base": "tkr_mono.base", "offs_boot": "offs_boot"})
        t = tk.read(kernel, address + offset)
    except (GuestMemoryError, MemberNotFound, ProfileError, LookupError):
        return None
    return (t["base"] + t["offs_boot"]) / 1e9


def _kaslr_slide(kernel: LinuxKernel) -> int:
    """The kernel's own KERNELOFFSET, from the VMCOREINFO text its vmcoreinfo_data points
    at (arm64's link address moved between releases); else _text minus the architecture's
    link address of _text."""
    with contextlib.suppress(GuestMemoryError, LookupError):
        text = kernel.read_cstring(kernel.read_u64(kernel.symbols.lookup("vmcoreinfo_data")),
                                   4096)
        note = parse_vmcoreinfo(text)
        if note is not None and note.kaslr_offset is not None:
            return note.kaslr_offset
    return kernel.text_virt - kernel.arch.default_text


@view(title="Kernel of {vm}")
def info(kernel: LinuxKernel) -> KernelInfo:
    """The guest kernel's identity: version, command line, uptime, how it was found."""
    release = hostname = cmdline = ""
    try:
        uts = Record(kernel.btf, "uts_namespace",
                     {"release": "name.release", "nodename": "name.nodename"})
        u = uts.read(kernel, kernel.symbols.lookup("init_uts_ns"))
        release = cstring(u["release"]).decode(errors="replace")
        hostname = cstring(u["nodename"]).decode(errors="replace")
    except (GuestMemoryError, ProfileError, LookupError):
        pass
    with contextlib.suppress(GuestMemoryError, LookupError):
        cmdline = kernel.read_cstring(kernel.read_u64(
            kernel.symbols.lookup("saved_command_line"))).decode(errors="replace")
    return KernelInfo(
        architecture=kernel.arch.name, version=kernel.banner, release=release,
        hostname=hostname, cmdline=cmdline,
        uptime=_uptime(kernel), paging_levels=kernel.levels, text_virtual=kernel.text_virt,
        text_physical=kernel.text_phys, kaslr_virtual_slide=_kaslr_slide(kernel),
        page_offset_base=kernel.page_offset, symbols=len(kernel.symbols),
        btf_types=len(kernel.btf), warm_profile=kernel.stats.warm,
        types_source=kernel.profile.types_source, located_by=kernel.stats.how,
        locate_seconds=dict(kernel.stats.seconds),
    )
