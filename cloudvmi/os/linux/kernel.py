"""Find a Linux kernel in guest-physical memory and undo KASLR, with no symbols given.

Cold, first choice: the kernel's VMCOREINFO note (vmcoreinfo.py) says where the image is
(phys_base, KASLR offset) and, from 6.0, where the kallsyms tables are; the image must then
prove the note (kallsyms decode there, the banner and the page tables agree). Without a note,
or with one that fails, kallsyms is found by scanning RAM and placed by the banner and BTF it
names. Types come from the kernel's own BTF, or, for kernels built without it (or whose BTF
is damaged), from a source outside (typesource.py) that must fit this very kernel. The result
is cached per build (profile.py). Warm: find this boot's physical load address from the cached
banner offset (2 MiB-aligned slots), then the virtual slide from the kernel's own page tables.
"""

import contextlib
import itertools
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from cloudvmi import arch as arches
from cloudvmi.arch import Arch
from cloudvmi.errors import GuestMemoryError, ProfileError, UnmappedAddress
from cloudvmi.memory.base import PhysicalMemory
from cloudvmi.os.linux import systemmap
from cloudvmi.os.linux.btf import BTF, locate_btf
from cloudvmi.os.linux.kallsyms import Kallsyms, kallsyms_at, kallsyms_candidates
from cloudvmi.os.linux.profile import MEMORY, VERSION, Profile, ProfileStore
from cloudvmi.os.linux.vmcoreinfo import VmcoreInfo, find_vmcoreinfo

if TYPE_CHECKING:  # types from outside the guest: only a cold attach may need them
    from cloudvmi.os.linux.typesource import TypeSources

BANNER_PREFIX = b"Linux version "
BTF_MAGIC = b"\x9f\xeb\x01"


@dataclass
class LocateStats:
    """How the kernel was found, and how long each step took (for benchmarks and `info`)."""

    warm: bool = False
    seconds: dict[str, float] = field(default_factory=dict)
    how: str = ""  # "vmcoreinfo", "scan", "cached profile" or "profile in memory"


# Profiles this process has loaded from a store, with their parsed types, by (store, build):
# many VMs of one build (an agent serving a collection of dumps) share one copy.
_LOADED: OrderedDict[tuple[Path, str], tuple[Profile, bytes, BTF]] = OrderedDict()
_LOADED_LOCK = threading.Lock()
_WARMING = threading.Lock()
MAX_LOADED = 8  # builds kept (a 7.x kernel's profile and types: tens of MiB)


class LinuxKernel:
    """A located kernel: symbols, types and the kernel address space, for the views."""

    def __init__(self, phys: PhysicalMemory, profile: Profile, btf: BTF, text_phys: int,
                 text_virt: int, levels: int, stats: LocateStats,
                 arch: Arch | None = None) -> None:
        self.arch = arch or arches.get()
        self._u64 = self.arch.pointer
        self.phys = phys
        self.profile = profile
        self.btf = btf
        self.text_phys = text_phys
        self.text_virt = text_virt
        self.levels = levels
        self.stats = stats
        self.symbols = profile.symbols(text_virt)
        self.image_end = self.symbols.get("_end") or text_virt + (64 << 20)
        pgd = next((a for a in map(self.symbols.get, self.arch.kernel_pgd_symbols) if a),
                   None)
        if pgd is None:
            raise ProfileError("no kernel page-table symbol "
                               f"({', '.join(self.arch.kernel_pgd_symbols)})")
        self.kernel_pgd = self.image_phys(pgd)
        self.space = self.arch.address_space(phys, self.kernel_pgd, levels)
        self.space.add_linear_range(text_virt, self.image_end - text_virt, text_phys)
        regions = phys.regions()
        # The direct map: page_offset is its virtual base, direct_phys the physical address
        # there (0 on x86-64; arm64's memstart_addr, where RAM does not start at 0).
        self.page_offset, self.direct_phys = self.arch.direct_map_base(
            self.image_u64, self._maps, levels, min(r.start for r in regions))
        for r in regions:
            self.space.add_linear_range(self.direct_virt(r.start), r.size, r.start)
        self._user_spaces: dict[int, object] = {}
        self._helpers: dict[type, object] = {}

    def helper(self, cls):
        """A per-kernel helper built once (compiled struct layouts): kernel.helper(TaskReader).
        Views share them instead of compiling layouts on every call."""
        h = self._helpers.get(cls)
        if h is None:
            h = self._helpers[cls] = cls(self)
        return h

    # -- addresses -------------------------------------------------------------------------
    def image_u64(self, name: str) -> int | None:
        """A kernel-image variable read by its physical address (before the direct map is
        known), or None when the kernel has no such symbol."""
        address = self.symbols.get(name)
        if address is None:
            return None
        return self._u64.unpack(self.phys.read(self.image_phys(address), 8))[0]

    def _maps(self, vaddr: int, paddr: int) -> bool:
        """Whether the kernel's page tables map VADDR to PADDR."""
        try:
            return self.space.translate(vaddr) == paddr
        except GuestMemoryError:
            return False

    def direct_virt(self, paddr: int) -> int:
        """The direct-map virtual address of physical PADDR."""
        return (paddr - self.direct_phys + self.page_offset) % (1 << 64)

    def direct_phys_of(self, vaddr: int) -> int:
        """The physical address of direct-map virtual VADDR."""
        return (vaddr - self.page_offset + self.direct_phys) % (1 << 64)

    def image_phys(self, vaddr: int) -> int:
        """Physical address of a kernel-image virtual address (the image is contiguous)."""
        if not self.text_virt <= vaddr < self.image_end:
            raise UnmappedAddress(vaddr, "kernel image address")
        return self.text_phys + (vaddr - self.text_virt)

    def per_cpu(self, symbol: int, cpu_offset: int) -> int:
        """Address of a per-CPU variable for the CPU whose __per_cpu_offset (or GS base) is
        CPU_OFFSET. Until 6.14 x86-64 per-CPU symbols are small offsets from zero; from 6.15
        they are kernel addresses and the offset wraps around 2**64."""
        return (symbol + cpu_offset) & ((1 << 8 * self.arch.pointer_size) - 1)

    def read(self, vaddr: int, size: int) -> bytes:
        return self.space.read(vaddr, size)

    def read_u64(self, vaddr: int) -> int:
        return self._u64.unpack(self.space.read(vaddr, self._u64.size))[0]

    def read_cstring(self, vaddr: int, limit: int = 4096) -> bytes:
        data = b""
        while len(data) < limit:
            n = min(256, limit - len(data), 4096 - ((vaddr + len(data)) & 4095))
            chunk = self.space.read(vaddr + len(data), n)
            end = chunk.find(b"\0")
            if end >= 0:
                return data + chunk[:end]
            data += chunk
        return data

    def user_space(self, pgd_virt: int):
        """The address space of a process, from its mm->pgd (a direct-map pointer)."""
        space = self._user_spaces.get(pgd_virt)
        if space is None:
            pgd_phys = self.direct_phys_of(pgd_virt)
            if not self.phys.contains(pgd_phys & ~0xFFF, 4096):  # arm64's may be a slab object
                raise UnmappedAddress(pgd_virt, "page-table root (mm->pgd)")
            space = self.arch.address_space(self.phys, pgd_phys, self.levels,
                                            self.arch.translation_cache(4096),
                                            kernel_root=self.kernel_pgd)
            self._user_spaces[pgd_virt] = space
        return space

    def invalidate(self) -> None:
        """Forget cached translations: a running guest may have changed its page tables."""
        self.space.cache.invalidate()
        self._user_spaces.clear()

    # -- typed objects ---------------------------------------------------------------------
    def object(self, type_name: str, address: int):
        """A typed view of kernel memory: `kernel.object("struct task_struct", a).comm`."""
        from cloudvmi.os.linux.objects import Object

        return Object(self.space, self.btf, type_name, address)

    def variable(self, name: str, type_name: str):
        """A kernel global by symbol; BTF does not type globals, so the caller names the type."""
        return self.object(type_name, self.symbols.lookup(name))

    @property
    def banner(self) -> str:
        return self.profile.banner.decode("utf-8", "replace").strip()


def locate(phys: PhysicalMemory, cache_dir: Path | None = None, arch: Arch | None = None,
           types: "TypeSources | None" = None, symbols: str | None = None,
           note: VmcoreInfo | None = None) -> LinuxKernel:
    """Find the kernel: warm from a cached profile when one matches, else cold. TYPES are
    the places to look for the kernel's types when it carries no BTF of its own; without
    them, SYMBOLS and the default places (typesource.TypeSources.default). NOTE: a
    VMCOREINFO note already found in this memory, tried before scanning for others."""
    arch = arch or arches.get()
    store = ProfileStore(cache_dir)
    start = time.perf_counter()
    with _WARMING:  # VMs of one build attached at once load its profile once
        kernel = _locate_warm(phys, arch, store, cache_dir, start)
    if kernel is not None:
        return kernel
    if types is None:
        from cloudvmi.os.linux.typesource import TypeSources

        types = TypeSources.default(symbols)
    return _locate_cold(phys, arch, store, types, note)


def _locate_warm(phys: PhysicalMemory, arch: Arch, store: ProfileStore, cache_dir: Path | None,
                 start: float) -> LinuxKernel | None:
    """The kernel from a profile already loaded or in the store, or None."""
    shared = _in_memory(phys, arch, cache_dir, start)
    if shared is not None:
        return shared
    for meta, base in store.candidates():
        try:
            banner = meta["banner"].encode("latin-1")
            text_phys = _load_slot(phys, arch, (int(meta["banner_offset"]), banner))
        except (KeyError, TypeError, ValueError, AttributeError):
            continue
        if text_phys is None:
            continue
        stats = LocateStats(warm=True, how="cached profile")
        stats.seconds["find_load_address"] = time.perf_counter() - start
        try:
            profile, btf_blob, index = store.load(meta, base)
        except (OSError, ProfileError):
            continue
        if profile.btf_offset >= 0 and (
                phys.read(text_phys + profile.btf_offset, 24) != btf_blob[:24]):
            continue
        kernel = _finish(phys, arch, profile, btf_blob, text_phys, None, stats, index=index)
        if meta.get("version") != VERSION or not kernel.btf.from_index:
            # an older format, or an index that does not fit its blob: written anew
            store.save(profile, btf_blob, kernel.btf)
        if profile.types_source == MEMORY:
            with _LOADED_LOCK:
                _LOADED[(cache_dir, base.name)] = (profile, btf_blob, kernel.btf)  # name: key
                while len(_LOADED) > MAX_LOADED:
                    _LOADED.popitem(last=False)
        return kernel
    return None


def _in_memory(phys: PhysicalMemory, arch: Arch, cache_dir: Path | None,
               start: float) -> LinuxKernel | None:
    """The kernel, warm from a profile this process already loaded from CACHE_DIR and whose
    banner and BTF this memory holds where the profile says; its types are shared."""
    if cache_dir is None:
        return None
    with _LOADED_LOCK:
        loaded = [(key, v) for key, v in reversed(_LOADED.items()) if key[0] == cache_dir]
    for key, (profile, blob, btf) in loaded:
        text_phys = _load_slot(phys, arch, (profile.banner_offset, profile.banner))
        if text_phys is None or (profile.btf_offset >= 0 and phys.read(
                text_phys + profile.btf_offset, 24) != blob[:24]):
            continue
        stats = LocateStats(warm=True, how="profile in memory")
        stats.seconds["find_load_address"] = time.perf_counter() - start
        with _LOADED_LOCK:
            if key in _LOADED:
                _LOADED.move_to_end(key)
        return _finish(phys, arch, profile, blob, text_phys, None, stats, btf)
    return None


def known_build(phys: PhysicalMemory, cache_dir: Path | None, arch: Arch | None = None) -> bool:
    """Whether PHYS holds a kernel whose profile is loaded or cached in CACHE_DIR: its banner
    at the profile's offset from a load slot."""
    if cache_dir is None:
        return False
    arch = arch or arches.get()
    with _LOADED_LOCK:
        loaded = [(p.banner_offset, p.banner) for (d, _), (p, _, _) in _LOADED.items()
                  if d == cache_dir]
    for meta, _ in ProfileStore(cache_dir).candidates():
        try:
            loaded.append((int(meta["banner_offset"]), meta["banner"].encode("latin-1")))
        except (KeyError, TypeError, ValueError, AttributeError):
            continue
    return any(_load_slot(phys, arch, check) is not None for check in loaded)


def _load_slot(phys: PhysicalMemory, arch: Arch, *checks: tuple[int, bytes]) -> int | None:
    """The first physical load address on the architecture's alignment where, for each
    (offset, bytes) check, those bytes sit at that offset from it."""
    reach = max(off + len(want) for off, want in checks)
    slot_size = arch.kernel_align
    for region in phys.regions():
        slot = (region.start + slot_size - 1) // slot_size * slot_size
        while slot + reach <= region.end:
            try:
                if all(phys.read(slot + off, len(want)) == want for off, want in checks):
                    return slot
            except UnmappedAddress:
                pass
            slot += slot_size
    return None


MAX_CANDIDATES = 8  # consistent kallsyms tables tried before giving up (fakes are hostile)
MAX_IMAGE = 256 << 20  # a kernel image's text, data and tables together (Debian's: ~40 MiB)


def _locate_cold(phys: PhysicalMemory, arch: Arch, store: ProfileStore,
                 types: "TypeSources", note: VmcoreInfo | None = None) -> LinuxKernel:
    """The kernel VMCOREINFO describes, when the image proves it; else the first kallsyms
    table found by scanning that the banner, the types and the page tables all confirm."""
    stats = LocateStats(warm=False)
    t0 = time.perf_counter()
    tried: list[str] = []
    found = find_vmcoreinfo(phys) if note is None else itertools.chain(
        [note], (n for n in find_vmcoreinfo(phys) if n.paddr != note.paddr))
    for info in found:
        stats.seconds["vmcoreinfo"] = time.perf_counter() - t0
        try:
            syms, text_phys = _symbols_from_note(phys, arch, info, types)
            stats.seconds["kallsyms"] = time.perf_counter() - t0
            stats.how = "vmcoreinfo"
            kernel, profile, blob = _from_symbols(phys, arch, syms, stats, types, text_phys,
                                                  info)
        except (ProfileError, GuestMemoryError) as exc:
            tried.append(f"{info.summary()}: {exc}")
            continue
        store.save(profile, blob, kernel.btf)
        return kernel
    if not tried:
        tried.append("no VMCOREINFO note in RAM (a kernel without kdump support)")
    stats.how = "scan"
    try:
        for number, syms in enumerate(kallsyms_candidates(phys)):
            if number >= MAX_CANDIDATES:
                break
            stats.seconds["kallsyms"] = time.perf_counter() - t0
            try:
                syms = systemmap.complete(syms, types.paths, None)
                kernel, profile, blob = _from_symbols(phys, arch, syms, stats, types)
            except (ProfileError, GuestMemoryError) as exc:
                tried.append(f"kallsyms table at {syms.table_paddr:#x}: {exc}")
                continue
            store.save(profile, blob, kernel.btf)
            return kernel
    except ProfileError as exc:
        tried.append(f"scan: {exc}")
    raise ProfileError("cannot locate the kernel; tried: " + "; ".join(tried[:4]))


def _symbols_from_note(phys: PhysicalMemory, arch: Arch, info: VmcoreInfo,
                       types: "TypeSources") -> tuple[Kallsyms, int]:
    """kallsyms where the note puts it (from 6.0; before, the scanned table the note's _stext
    agrees with) and the physical _text the note's phys_base gives."""
    delta = arch.image_offset(info.number)
    if delta is None:
        raise ProfileError("the note gives no phys_base")
    stext = info.symbol("_stext")
    table = info.symbol("kallsyms_token_table")
    if table is not None:
        offsets = info.symbol("kallsyms_offsets")
        syms = kallsyms_at(phys, (table - delta) % (1 << 64), None if offsets is None else (
            (offsets - delta) % (1 << 64), offsets), _note_u32(phys, info, delta,
                                                             "kallsyms_num_syms"))
    else:  # before 6.0: scan the kernel image the note places
        if stext is None:
            raise ProfileError("the note gives no _stext")
        start = (stext - delta) % (1 << 64)
        image = (start, start + MAX_IMAGE)
        agreeing = (s for n, s in enumerate(kallsyms_candidates(phys, within=image))
                    if n < MAX_CANDIDATES and s.relative_to is None and s.get("_stext") == stext)
        syms = next(agreeing, None)
        if syms is None:
            raise ProfileError("no kallsyms table in RAM agrees with its _stext")
    if stext is None or syms.get("_stext") != stext:
        raise ProfileError("its _stext is not kallsyms' _stext")
    syms = systemmap.complete(syms, types.paths, info.release)
    try:
        text_virt = syms.lookup("_text")
    except KeyError as exc:
        raise ProfileError(f"kallsyms lacks a symbol every kernel has: {exc}") from exc
    return syms, (text_virt - delta) % (1 << 64)


def _note_u32(phys: PhysicalMemory, info: VmcoreInfo, delta: int, name: str) -> int | None:
    """The 32-bit value at the kernel-image symbol NAME the note gives, or None."""
    at = info.symbol(name)
    if at is None:
        return None
    try:
        return int.from_bytes(phys.read((at - delta) % (1 << 64), 4), "little")
    except GuestMemoryError:
        return None


def _from_symbols(phys: PhysicalMemory, arch: Arch, syms: Kallsyms, stats: LocateStats,
                  types: "TypeSources", text_phys: int | None = None,
                  info: VmcoreInfo | None = None):
    """Kernel, profile and BTF blob for a decoded table; TEXT_PHYS when the caller knows it."""
    t1 = time.perf_counter()
    known_virt = True
    if syms.relative_to is not None:  # a scanned 7.x table: place it where _text is linked
        text_rel = syms.get("_text")
        if text_rel is None:
            raise ProfileError("kallsyms lacks a symbol every kernel has: _text")
        text_phys = (syms.relative_to + text_rel) % (1 << 64)
        syms = syms.rebased(arch.default_text - text_rel)
        known_virt = False  # the page tables tell the real slide
    try:
        text_virt = syms.lookup("_text")
        banner_virt = syms.lookup("linux_banner")
    except KeyError as exc:
        raise ProfileError(f"kallsyms lacks a symbol every kernel has: {exc}") from exc
    btf_virt, btf_end = syms.get("__start_BTF"), syms.get("__stop_BTF")
    if text_phys is None:
        checks = [(banner_virt - text_virt, BANNER_PREFIX)]
        if btf_virt is not None:
            checks.append((btf_virt - text_virt, BTF_MAGIC))
        text_phys = _load_slot(phys, arch, *checks)
        if text_phys is None and btf_virt is not None:  # not 2 MiB aligned: find BTF itself
            btf_paddr, _ = locate_btf(phys)
            text_phys = text_virt - (btf_virt - btf_paddr)
        if text_phys is None:
            raise ProfileError("no load address puts the banner where kallsyms says")
    banner = _read_banner(phys, text_phys + banner_virt - text_virt)
    if info is not None and info.release is not None and not banner.startswith(
            BANNER_PREFIX + info.release.encode() + b" "):
        raise ProfileError(f"the banner does not name release {info.release!r}")
    stats.seconds["find_btf"] = time.perf_counter() - t1
    own = _own_btf(phys, text_phys, text_virt, btf_virt, btf_end)
    refused: list[str] = []
    if isinstance(own, bytes):
        sources = iter([(own, MEMORY)])
    else:
        sources = types.candidates(banner, info.get("BUILD-ID") if info else None, refused)
    for blob, source in sources:
        profile = Profile.from_symbols(
            banner=banner, banner_offset=banner_virt - text_virt,
            btf_offset=btf_virt - text_virt if source == MEMORY else -1,
            btf_size=len(blob), symbols=syms, text_virt=text_virt, types_source=source,
        )
        try:
            kernel = _finish(phys, arch, profile, blob, text_phys,
                             text_virt if known_virt else None, stats)
            if source != MEMORY:
                _check_types(kernel)
        except (ProfileError, GuestMemoryError) as exc:
            if source == MEMORY:
                raise
            refused.append(f"{source}: {exc}")
            continue
        return kernel, profile, blob
    raise ProfileError(types.none_fit(own, refused))


def _own_btf(phys: PhysicalMemory, text_phys: int, text_virt: int, start: int | None,
             stop: int | None) -> bytes | str:
    """The kernel's own BTF blob, or why there is none."""
    if start is None or stop is None:
        return "the kernel was built without BTF (no __start_BTF symbol)"
    size = stop - start
    if not 24 <= size <= 64 << 20:
        return f"the kernel's BTF section has an impossible size ({size} bytes)"
    paddr = text_phys + start - text_virt
    try:
        blob = phys.read(paddr, size)
    except GuestMemoryError:
        return f"the kernel's BTF at {paddr:#x} is outside RAM"
    if blob[:3] != BTF_MAGIC:
        return f"the kernel's BTF at {paddr:#x} is damaged (no BTF magic)"
    return blob


def _check_types(kernel: LinuxKernel) -> None:
    """Types from outside must describe this very build: read with them, init_task is the
    idle task (pid 0, "swapper") and init_uts_ns holds the banner's release."""
    btf = kernel.btf
    try:
        task = kernel.symbols.lookup("init_task")
        comm = kernel.read_cstring(task + btf.struct("task_struct").offset("comm"), 16)
        pid = int.from_bytes(kernel.read(task + btf.struct("task_struct").offset("pid"), 4),
                             "little")
        uts = kernel.symbols.lookup("init_uts_ns")
        release = kernel.read_cstring(uts + btf.struct("uts_namespace").offset("name")
                                      + btf.struct("new_utsname").offset("release"), 65)
    except (KeyError, LookupError, ProfileError, GuestMemoryError) as exc:
        raise ProfileError(f"its types do not fit this kernel ({exc})") from exc
    from cloudvmi.os.linux.typesource import release_of

    want = release_of(kernel.profile.banner).encode()
    if not comm.startswith(b"swapper") or pid != 0:
        raise ProfileError(f"its types do not fit this kernel: init_task reads as "
                           f"{comm[:16]!r} pid {pid}, not the idle task")
    if release != want:
        raise ProfileError(f"its types do not fit this kernel: init_uts_ns reads release "
                           f"{release[:65]!r}, the banner says {want!r}")


def _read_banner(phys: PhysicalMemory, paddr: int) -> bytes:
    try:
        data = phys.read(paddr, 512)
    except UnmappedAddress as exc:
        raise ProfileError("linux_banner is outside RAM: symbols and BTF disagree") from exc
    if not data.startswith(BANNER_PREFIX) or b"\0" not in data:
        raise ProfileError("no Linux banner where kallsyms and BTF put it: not a Linux kernel, "
                           "or its tables are corrupt")
    return data[: data.index(b"\0")]


def _finish(phys: PhysicalMemory, arch: Arch, profile: Profile, btf_blob: bytes,
            text_phys: int, text_virt: int | None, stats: LocateStats,
            btf: BTF | None = None, index: bytes | None = None) -> LinuxKernel:
    """The kernel, once the page tables confirm where the image is. INDEX: the BTF's
    cached type index (BTF.index_bytes)."""
    t0 = time.perf_counter()
    btf = btf or BTF.from_bytes(btf_blob, index)
    stats.seconds["btf_parse"] = time.perf_counter() - t0
    levels = _paging_levels(phys, arch, text_phys, profile)
    pgd_off = next((o for o in map(profile.offset, arch.kernel_pgd_symbols) if o is not None),
                   None)
    if pgd_off is None:
        raise ProfileError(f"no {arch.kernel_pgd_symbols[0]} symbol: cannot find the kernel "
                           "page tables")
    pgd_phys = text_phys + pgd_off
    t1 = time.perf_counter()
    found = _virtual_text(phys, arch, pgd_phys, levels, text_phys, profile)
    if found is None and arch.image_voffset_symbol:
        # The slide is known, the depth not (a kernel with no variable saying how many bits
        # it chose at boot): the depth whose walk maps the image is the one in use.
        for other in sorted(set(arch.direct_map) - {levels}):
            found = _virtual_text(phys, arch, pgd_phys, other, text_phys, profile)
            if found is not None:
                levels = other
                break
    stats.seconds["virtual_slide"] = time.perf_counter() - t1
    if found is None:
        raise ProfileError("the kernel page tables do not map the kernel image")
    if text_virt is not None and found != text_virt:
        raise ProfileError(f"page tables map _text at {found:#x}, kallsyms says {text_virt:#x}")
    return LinuxKernel(phys, profile, btf, text_phys, found, levels, stats, arch)


def _paging_levels(phys: PhysicalMemory, arch: Arch, text_phys: int, profile: Profile) -> int:
    def read(symbol: str, size: int) -> bytes | None:
        off = profile.offset(symbol)
        return None if off is None else phys.read(text_phys + off, size)

    return arch.paging_levels(read)


def _virtual_text(phys: PhysicalMemory, arch: Arch, pgd_phys: int, levels: int,
                  text_phys: int, profile: Profile) -> int | None:
    """Where the kernel's own page tables map the physical _text: read from the image's
    own slide variable where the architecture has one (then checked on the tables), else
    searched in the kernel window."""
    space = arch.address_space(phys, pgd_phys, levels)
    off = profile.offset(arch.image_voffset_symbol) if arch.image_voffset_symbol else None
    if off is not None:
        try:
            voffset = arch.read_pointer(phys.read(text_phys + off, arch.pointer_size))
        except GuestMemoryError:
            return None
        # arm64 6.1 maps the image from _stext: the header before it is not in swapper
        for probe in {0, profile.offset("_stext") or 0}:
            with contextlib.suppress(GuestMemoryError):
                if space.translate((text_phys + probe + voffset) % (1 << 64)) == (
                        text_phys + probe):
                    return (text_phys + voffset) % (1 << 64)
        return None
    try:
        for m in space.mappings(*arch.kernel_window, limit=1 << 16):
            if m.pbase <= text_phys < m.pbase + m.size:
                return m.vbase + (text_phys - m.pbase)
    except GuestMemoryError:
        return None
    return None
