"""Integrity of the running kernel, checked against itself: its own symbols (kallsyms), its
own types (BTF) and the structures it keeps, never a copy from disk or a list of offsets.

What each check covers, and what it does not:

* System calls (the tables each architecture declares: `Arch.syscall_tables`). Entry N of
  `sys_call_table` must be the function the ABI names for N (`__x64_sys_NAME` on x86-64,
  `__arm64_sys_NAME` on arm64, from the architecture's table of numbers, with the kernel's
  own aliases such as stat -> newstat), or the kernel's `sys_ni_syscall` for numbers it does
  not implement. Numbers the ABI table does not know yet must still be some entry of its
  kind. The 32-bit tables (`ia32_sys_call_table`, `x32_sys_call_table`, arm64's
  `compat_sys_call_table`) have other numbers; their entries are checked for their kind
  only: a syscall entry of their ABI, in kernel text.
  Kernels with the branch-history fix (6.9, and backports such as Debian's 6.1) no longer call
  through the table: `x64_sys_call` (and `ia32_sys_call`, `x32_sys_call`) is a `switch`. There
  the switch itself is decoded, number by number, from the code in guest memory (a compare
  tree on the number register, each leaf a jump to the entry), and each number's destination
  is held to the same rule; the table, which tracing still reads, is checked as well. A call
  the dispatcher makes before switching (its ftrace site patched) must go to kernel text or
  to the trampoline of a registered ftrace_ops. Code that is not a plain compare tree (an
  int3 left by a breakpoint, another compiler's output) is reported as not decoded, never
  guessed. The bodies of the syscall functions are not checked (an inline patch inside one
  is not seen); ftrace- and kprobe-based hooks on them are the third check's.
* Interrupt descriptor table (x86-64). Every present gate of `idt_table` (the table the CPUs
  load at boot; a CPU whose IDTR was pointed elsewhere is not seen) must lead to an entry
  point in the kernel's entry text: the exception handler the vector architecturally belongs
  to (`asm_exc_page_fault` for 14), a system-vector entry, the int 0x80 entry, or the stub of
  `irq_entries_start`/`spurious_entries_start` that pushes that very vector. Reserved
  exception vectors keep the kernel's early boot handlers (`early_idt_handler_array`, in
  freed init memory) and are accepted only at their own slot.
* Exception vectors (arm64). Each 128-byte entry of `vectors` may leave itself only by a
  direct branch to its own handler (named for its exception level and kind: `el0t_64_sync`,
  `el1h_64_irq`; `el0_sync` on 5.x) or to `__bad_stack`; a branch through a register is a
  finding. VBAR_EL1 itself, and the trampoline and branch-hardening copies, are not read.
* ftrace and kprobes. Every `ftrace_ops` on `ftrace_ops_list` (its handler, the handler it
  saved, a direct-call target, and the functions its filter hash hooks) and every kprobe in
  `kprobe_table` (pre/post handlers; the probes under an aggregate probe; a kretprobe's own
  handlers) is listed by the `kernel_hooks` view. A handler outside kernel text and outside
  every listed module is a high-severity finding; one in a listed module is informational.
* Modules. Three sources are compared: the `modules` list (what /proc/modules shows), the
  module kobjects of `module_kset` (what /sys/module shows; built-in modules have no struct
  module and are skipped), and a carve of module memory: every 64-byte aligned slot (struct
  module is cache-line aligned) of the pages the kernel's page tables map in module memory
  (`Arch.module_areas`: from the end of the kernel image to MODULES_END on x86-64; the areas
  the kernel chose at boot on arm64), whose `mkobj.mod` points back at itself. A struct
  module copied elsewhere (vmalloc space, the direct map) is not seen. A
  module missing from a source read to its end is a finding; a source cut short (a looping
  list, a wild pointer) proves no absence, and marks the result partial instead.

Guest memory is hostile: every walk is bounded and cycle-checked, every read checked, and a
structure that cannot be followed ends that part of a check with the result marked partial.
"""

import bisect
import struct
import sys
from array import array
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import compress
from operator import eq

from cloudvmi.arch.base import SyscallTable
from cloudvmi.capability import Column, view
from cloudvmi.errors import CloudVMIError, GuestMemoryError
from cloudvmi.os.linux.kernel import LinuxKernel
from cloudvmi.os.linux.records import Record, cstring
from cloudvmi.os.linux.views.common import ListWalkError, Problems, ViewResult, list_nodes
from cloudvmi.os.linux.views.modules import STATES, ModuleReader, modules

HIGH, MEDIUM, INFO = "high", "medium", "info"

# Bounds on what guest memory can make a check do (far above any real kernel).
MAX_SYSCALLS = 1024            # entries of one table or numbers of one dispatcher (x32: 548)
MAX_DISPATCH_BYTES = 1 << 16   # code of one syscall dispatcher (Debian 6.12: 5.3 KiB)
MAX_DISPATCH_STEPS = 512       # instructions followed for one number (a compare tree: ~20)
IDT_VECTORS = 256              # architectural
EXCEPTION_VECTORS = 32         # architectural: vectors 0-31 are exceptions
MAX_FTRACE_OPS = 1024
MAX_HASH_BITS = 12             # the kernel's own cap on a filter hash (FTRACE_HASH_MAX_BITS)
MAX_HASH_ENTRIES = 1 << 16     # hooked functions read, all ftrace_ops together
MAX_HOOKED_NAMES = 1024        # hooked functions named in one Hook
MAX_TRAMPOLINE = 1 << 16       # bytes of one ftrace trampoline (x86-64: a few hundred)
MAX_KPROBE_BUCKETS = 1 << 12   # the kernel has 64 (KPROBE_HASH_BITS 6)
MAX_KPROBES = 1 << 14          # kprobes read in all, aggregated ones included
MAX_KSET_ENTRIES = 1 << 14     # kobjects in /sys/module (Debian 6.12 with 6 modules: 98)
MAX_SCAN_PAGES = 1 << 16       # 4 KiB pages of module memory carved (256 MiB; Debian: ~1000)
MAX_SCAN_CHUNK = 2 << 20       # bytes read at once while carving (one 2 MiB mapping)
MAX_CARVED = 1 << 12           # struct module candidates (self-pointing slots) examined
MAX_MODULE_SYMBOLS = 1 << 16   # a module's symtab entries read to name an address
MAX_MODULE_RANGE = 1 << 30     # bytes of one module memory region
MAX_SHOWN = 8                  # hooked functions or numbers named in one detail string
MAX_PROBLEMS = 8               # reasons named in `partial`
MODULE_ALIGN = 64              # struct module is ____cacheline_aligned
# Architectural exception vectors, as the kernel names their entries (asm_exc_NAME).
EXCEPTIONS = {0: "divide_error", 1: "debug", 2: "nmi", 3: "int3", 4: "overflow", 5: "bounds",
              6: "invalid_op", 7: "device_not_available", 8: "double_fault",
              9: "coproc_segment_overrun", 10: "invalid_tss", 11: "segment_not_present",
              12: "stack_segment", 13: "general_protection", 14: "page_fault",
              15: "spurious_interrupt_bug", 16: "coprocessor_error", 17: "alignment_check",
              18: "machine_check", 19: "simd_coprocessor_error", 20: "virtualization_exception",
              21: "control_protection", 28: "hv_injection_exception",
              29: "vmm_communication"}
INTERRUPT_ENTRIES = ("asm_sysvec_", "entry_INT80", "asm_int80_emulation")
STUB_ARRAYS = ("irq_entries_start", "spurious_entries_start")


@dataclass
class Finding:
    check: str  # syscall_table, syscall_dispatch, idt, ftrace, kprobe, modules
    subject: str  # what was checked: "sys_call_table[62] kill", "idt[14]", a module's name
    address: int  # what the evidence points at: the handler found, or the struct module
    expected: str
    actual: str  # symbol+offset in kernel text, "module NAME (symbol)" or "outside kernel text"
    severity: str  # high, medium or info
    detail: str


@dataclass
class CheckRun:
    """What one part of a check looked at: a clean result says nothing without this."""

    check: str
    subject: str  # the table, dispatcher or structure read
    checked: int  # entries, numbers, gates, hooks or modules examined
    findings: int
    covers: str  # how it was checked, and what was not


@dataclass
class Hook:
    """An ftrace_ops or kprobe handler: where it runs, and what it hooks."""

    kind: str  # ftrace_ops.func, ftrace_ops.saved_func, ftrace_ops.direct, kprobe.pre_handler,
    # kprobe.post_handler, kretprobe.handler, kretprobe.entry_handler
    address: int  # the struct ftrace_ops or struct kprobe
    handler: int
    handler_symbol: str
    owner: str  # kernel, module NAME, or unknown (outside text and every listed module)
    hooks: list[str]  # the functions hooked (an ftrace filter) or the probed address


@dataclass
class IntegrityReport:
    findings: list[Finding] = field(default_factory=list)
    runs: list[CheckRun] = field(default_factory=list)
    hooks: list[Hook] = field(default_factory=list)
    partial: str | None = None


# -- where an address lies -----------------------------------------------------------------

@dataclass
class _Module:
    address: int  # struct module
    name: str
    state: str
    ranges: list[tuple[int, int]]
    kallsyms: int
    sources: set[str] = field(default_factory=set)  # list, kset, scan
    symbols: list[tuple[int, int]] | None = None  # (value, st_name), sorted, read on demand
    strtab: int = 0

    @property
    def listed(self) -> bool:
        return "list" in self.sources

    def contains(self, address: int) -> bool:
        return any(lo <= address < hi for lo, hi in self.ranges)


class _ModuleLayout:
    """Fields of struct module the checks need: its memory regions (mem[] or core_layout and
    init_layout, probed from BTF) and its kallsyms; Elf64_Sym to name module addresses."""

    def __init__(self, kernel: LinuxKernel) -> None:
        btf = kernel.btf
        reader = kernel.helper(ModuleReader)
        fields = {"name": "name", "state": "state", "kallsyms": "kallsyms",
                  "kobj_mod": "mkobj.mod"}
        self.regions = []
        if reader.mem_types:
            for i in range(reader.mem_types):
                fields[f"base{i}"], fields[f"size{i}"] = f"mem[{i}].base", f"mem[{i}].size"
                self.regions.append(i)
        else:
            for i, layout in enumerate(("core_layout", "init_layout")):
                fields[f"base{i}"], fields[f"size{i}"] = f"{layout}.base", f"{layout}.size"
                self.regions.append(i)
        self.record = Record(btf, "module", fields, optional=("kallsyms",))
        self.mkobj_mod = self.record.offset("kobj_mod")
        self.name_size = self.record.size_of("name")
        try:  # only to name module addresses: a module is still known without them
            self.kallsyms: Record | None = Record(btf, "mod_kallsyms", {
                "symtab": "symtab", "num": "num_symtab", "strtab": "strtab"})
            self.sym = Record(btf, "elf64_sym", {"name": "st_name", "value": "st_value"})
        except CloudVMIError:
            self.kallsyms = None

    def read(self, kernel: LinuxKernel, address: int) -> _Module:
        m = self.record.read(kernel, address)
        ranges = []
        for i in self.regions:
            base, size = m[f"base{i}"], m[f"size{i}"]
            if base and 0 < size <= MAX_MODULE_RANGE:
                ranges.append((base, base + size))
        return _Module(address=address, name=_text(cstring(m["name"])),
                       state=STATES.get(m["state"], str(m["state"])), ranges=ranges,
                       kallsyms=m.get("kallsyms", 0))

    def looks_like_module(self, m: dict) -> bool:
        """A carved slot is taken for a struct module only with a valid state and a
        printable name that fits its array."""
        name = cstring(m["name"])
        return (m["state"] in STATES and 0 < len(name) < self.name_size
                and all(0x21 <= c < 0x7F for c in name))


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "backslashreplace")


class _Places:
    """Names an address: a kernel symbol, a module (and its symbol), or nothing known."""

    def __init__(self, kernel: LinuxKernel, mods: list[_Module]) -> None:
        s = kernel.symbols
        self.kernel = kernel
        self.text = (s.get("_stext") or kernel.text_virt, s.get("_etext") or kernel.image_end)
        self.init = (s.get("__init_begin") or 0, s.get("__init_end") or 0)
        self._ranges = sorted(((lo, hi, m) for m in mods for lo, hi in m.ranges),
                              key=lambda r: r[:2])
        self._starts = [r[0] for r in self._ranges]

    def in_text(self, address: int) -> bool:
        return self.text[0] <= address < self.text[1]

    def module_of(self, address: int) -> _Module | None:
        i = bisect.bisect_right(self._starts, address) - 1
        # Regions do not overlap in a sane kernel; look a few back in case a hostile one does.
        for start, end, m in reversed(self._ranges[max(0, i - 3):i + 1]):
            if start <= address < end:
                return m
        return None

    def symbol(self, address: int) -> str:
        found = self.kernel.symbols.symbolize(address)
        if found is None:
            return f"{address:#x}"
        name, off = found
        return f"{name}+{off:#x}" if off else name

    def owner(self, address: int) -> tuple[str, _Module | None]:
        """(kernel | module | hidden module | outside, the module)."""
        if self.in_text(address):
            return "kernel", None
        m = self.module_of(address)
        if m is not None:
            return ("module" if m.listed else "hidden module"), m
        return "outside", None

    def describe(self, address: int) -> str:
        where, m = self.owner(address)
        if where == "kernel":
            return self.symbol(address)
        if m is not None:
            notes = [_module_symbol(self.kernel, m, address),
                     None if m.listed else "not in the modules list"]
            shown = ", ".join(n for n in notes if n)
            return f"module {m.name}" + (f" ({shown})" if shown else "")
        if self.init[0] <= address < self.init[1]:
            return f"outside kernel text (freed init memory, {self.symbol(address)})"
        if self.kernel.text_virt <= address < self.kernel.image_end:
            return f"outside kernel text (kernel data, {self.symbol(address)})"
        return "outside kernel text"


def _module_symbol(kernel: LinuxKernel, m: _Module, address: int) -> str | None:
    """The module's own symbol at or below ADDRESS, from its kallsyms (best effort: a
    module whose symbol table cannot be read is named without one)."""
    try:
        layout = kernel.helper(_ModuleLayout)
        if m.symbols is None:
            m.symbols = []
            if not m.kallsyms or layout.kallsyms is None:
                return None
            k = layout.kallsyms.read(kernel, m.kallsyms)
            count = min(k["num"], MAX_MODULE_SYMBOLS)
            size = layout.sym.size
            raw = kernel.read(k["symtab"], count * size)
            value_at, name_at = layout.sym.offset("value"), layout.sym.offset("name")
            m.symbols = sorted(
                (struct.unpack_from("<Q", raw, i * size + value_at)[0],
                 struct.unpack_from("<I", raw, i * size + name_at)[0]) for i in range(count))
            m.strtab = k["strtab"]
        best = None
        for value, name in m.symbols:
            if value > address:
                break
            if name and m.contains(value):
                best = (value, name)
        if best is None:
            return None
        name = _text(kernel.read_cstring(m.strtab + best[1], 128))
        off = address - best[0]
        return f"{name}+{off:#x}" if off else name
    except (GuestMemoryError, CloudVMIError, struct.error):
        return None


# -- the run's shared state ------------------------------------------------------------------

class _Run(Problems):
    def __init__(self, kernel: LinuxKernel) -> None:
        super().__init__(MAX_PROBLEMS, unique=True)
        self.kernel = kernel
        self.symbols = kernel.symbols
        self.report = IntegrityReport()
        self.modules: dict[int, _Module] = {}
        self.places = _Places(kernel, [])
        self.kset_kobjects = 0  # kobjects walked in module_kset
        self.complete: set[str] = set()  # module sources read to their end (list, kset, scan)
        self.carved = 0  # self-pointing slots examined by the carve
        self.hash_entries = 0  # ftrace filter-hash entries read, all ops together
        self.scanned_pages = 0  # pages of module memory carved
        self.trampolines: list[tuple[int, int]] = []  # ftrace trampolines of listed ops

    def in_trampoline(self, address: int) -> bool:
        return any(lo <= address < hi for lo, hi in self.trampolines)

    def find(self, check: str, subject: str, address: int, expected: str, actual: str,
             severity: str, detail: str) -> None:
        self.report.findings.append(Finding(check, subject, address, expected, actual,
                                            severity, detail))

    def ran(self, check: str, subject: str, checked: int, before: int, covers: str) -> None:
        self.report.runs.append(CheckRun(check, subject, checked,
                                         len(self.report.findings) - before, covers))

    def finish(self) -> IntegrityReport:
        self.report.partial = self.partial
        return self.report


# -- modules: the list, the kset and module memory ---------------------------------------------

def _collect_modules(run: _Run) -> None:
    """Every struct module any source knows, with the sources that know it."""
    kernel = run.kernel
    try:
        layout = kernel.helper(_ModuleLayout)
    except CloudVMIError as exc:
        run.problem(f"struct module not understood: {exc}")
        return
    listed = modules(kernel)
    if listed.partial:
        run.problem(f"modules list: {listed.partial}")
    else:
        run.complete.add("list")
    found: dict[int, set[str]] = {}
    for m in listed.items:
        found.setdefault(m.struct_address, set()).add("list")
    for address in _kset_modules(run, layout):
        found.setdefault(address, set()).add("kset")
    for address in _carve_modules(run, layout):
        found.setdefault(address, set()).add("scan")
    for address, sources in found.items():
        try:
            m = layout.read(kernel, address)
        except GuestMemoryError as exc:
            run.problem(f"struct module {address:#x}: {exc}")
            m = _Module(address, "?", "?", [], 0)
        m.sources = sources
        run.modules[address] = m
    run.places = _Places(kernel, list(run.modules.values()))


def _kset_modules(run: _Run, layout: _ModuleLayout) -> list[int]:
    """struct module addresses behind /sys/module: module_kset's kobjects (module_kobject)."""
    kernel = run.kernel
    where = run.symbols.get("module_kset")
    if where is None:
        run.problem("no module_kset symbol: /sys/module not compared")
        return []
    btf = kernel.btf
    try:
        entry = btf.struct("kobject").offset("entry")
        mk_mod = btf.struct("module_kobject").offset("mod")
        mkobj = btf.struct("module").offset("mkobj")
        list_at = btf.struct("kset").offset("list")
    except CloudVMIError as exc:
        run.problem(f"module kobjects not understood: {exc}")
        return []
    out = []
    try:
        kset = kernel.read_u64(where)
        head = kset + list_at
        for node in list_nodes(kernel.read_u64, head, MAX_KSET_ENTRIES):
            kobj = node - entry
            run.kset_kobjects += 1
            mod = kernel.read_u64(kobj + mk_mod)
            if not mod:
                continue  # a built-in module: parameters only, no struct module
            if mod + mkobj != kobj:
                raise GuestMemoryError(f"kobject {kobj:#x} names module {mod:#x}, whose "
                                       "mkobj is elsewhere")
            out.append(mod)
    except ListWalkError as exc:
        run.problem(f"module_kset: {exc.reason}")
        return out
    except GuestMemoryError as exc:
        run.problem(f"module_kset: {exc}")
        return out
    run.complete.add("kset")
    return out


def _module_areas(kernel: LinuxKernel) -> list[tuple[int, int]]:
    """The architecture's module memory, page-aligned, overlaps joined (each page carved
    once)."""
    areas = []
    for start, end in sorted(kernel.arch.module_areas(kernel.image_u64, kernel.image_end)):
        start, end = start & ~0xFFF, min(end, 1 << 64)
        if areas and start <= areas[-1][1]:
            areas[-1] = (areas[-1][0], max(areas[-1][1], end))
        elif start < end:
            areas.append((start, end))
    return areas


class _CarveCut(GuestMemoryError):
    """The carve met more than it may look at: hostile memory."""


def _carve_modules(run: _Run, layout: _ModuleLayout) -> list[int]:
    """struct module headers in module memory: cache-line aligned slots whose mkobj.mod
    points back at the slot, then a plausible name and state."""
    kernel = run.kernel
    areas = _module_areas(kernel)
    if not areas:
        run.problem(f"module memory not carved: where {kernel.arch.name} modules lie is not "
                    "known for this kernel")
        return []
    off = layout.mkobj_mod
    found = []
    try:
        for window in areas:
            for m in kernel.space.mappings(*window, limit=2 * MAX_SCAN_PAGES):
                lo, hi = max(m.vbase, window[0]), min(m.vbase + m.size, window[1])
                for start in range(lo, hi, MAX_SCAN_CHUNK):
                    size = min(MAX_SCAN_CHUNK, hi - start)
                    run.scanned_pages += size >> 12
                    if run.scanned_pages > MAX_SCAN_PAGES:
                        run.problem(f"module memory: more than {MAX_SCAN_PAGES} pages, "
                                    "carve cut")
                        return found
                    found += _carve_chunk(run, layout, m.pbase + (start - m.vbase), start,
                                          size, off)
    except GuestMemoryError as exc:
        run.problem(f"module memory: {exc}")
        return found
    run.complete.add("scan")
    return found


def _carve_chunk(run: _Run, layout: _ModuleLayout, paddr: int, vaddr: int, size: int,
                 off: int) -> list[int]:
    kernel = run.kernel
    try:
        data = kernel.phys.read(paddr, size)
    except GuestMemoryError:
        return []  # device memory mapped there (fixmap-like), not RAM
    full = (size - off - 8) // MODULE_ALIGN + 1 if size >= off + 8 else 0  # words inside
    hits = _self_pointers(data, vaddr, off, full)
    for slot in range(vaddr + full * MODULE_ALIGN, vaddr + size, MODULE_ALIGN):
        try:  # slots whose mkobj.mod lies past this chunk's end
            if kernel.read_u64(slot + off) == slot:
                hits.append(slot)
        except GuestMemoryError:
            pass
    out = []
    for slot in hits:
        run.carved += 1
        if run.carved > MAX_CARVED:
            raise _CarveCut(f"more than {MAX_CARVED} self-pointing slots")
        try:
            if layout.looks_like_module(layout.record.read(kernel, slot)):
                out.append(slot)
        except GuestMemoryError:
            continue
    return out


def _self_pointers(data: bytes, vaddr: int, off: int, count: int) -> list[int]:
    """Of the COUNT slots S every MODULE_ALIGN bytes from VADDR, those whose word at S+OFF
    in DATA is S. Compared in C (memoryview, map), as a 2 MiB chunk has 32768 slots."""
    raw = data[:len(data) // 8 * 8]
    if sys.byteorder == "little":  # guest words are little-endian (x86-64)
        words = memoryview(raw).cast("Q")
    else:
        words = array("Q", raw)
        words.byteswap()
    picked = words[off // 8::MODULE_ALIGN // 8][:count]
    slots = range(vaddr, vaddr + count * MODULE_ALIGN, MODULE_ALIGN)
    return list(compress(slots, map(eq, picked, slots)))


def _check_modules(run: _Run) -> None:
    before = len(run.report.findings)
    mods = list(run.modules.values())
    for m in mods:
        _judge_module(run, m)
    judged = len(run.report.findings)  # the sources themselves find nothing
    run.ran("modules", "modules list", sum(m.listed for m in mods), judged,
            "struct modules on the `modules` list (what /proc/modules shows)")
    run.ran("modules", "module_kset", sum("kset" in m.sources for m in mods), judged,
            f"module kobjects with a struct module (what /sys/module shows), of "
            f"{run.kset_kobjects} kobjects (built-in modules have none)")
    run.ran("modules", "module memory", sum("scan" in m.sources for m in mods), judged,
            f"struct module headers carved from {run.scanned_pages} mapped pages of module "
            "memory")
    run.ran("modules", "all three compared", len(mods), before,
            "a module missing from any source read to its end is a finding")


def _judge_module(run: _Run, m: _Module) -> None:
    """Findings for a module some complete source lacks (an incomplete source proves no
    absence: the result is partial instead)."""
    sources, complete = m.sources, run.complete
    seen_by = _sources_text(sources)
    if "list" not in sources:
        if "list" in complete:
            also = " and /sys/module" if "kset" in complete and "kset" not in sources else ""
            run.find("modules", m.name, m.address, "in the modules list (/proc/modules)",
                     f"only in {seen_by}", HIGH,
                     f"struct module at {m.address:#x}, state {m.state}: hidden from "
                     f"/proc/modules{also}")
        return
    if "kset" not in sources and "kset" in complete:
        unformed = m.state == STATES[3]
        run.find("modules", m.name, m.address, "a kobject in module_kset (/sys/module)",
                 f"only in {seen_by}", INFO if unformed else MEDIUM,
                 f"struct module at {m.address:#x}, state {m.state}: "
                 + ("still loading, not in sysfs yet" if unformed
                    else "listed in /proc/modules but missing from /sys/module"))
    if "scan" not in sources and "scan" in complete:
        run.find("modules", m.name, m.address, "struct module in module memory",
                 f"not found by the carve (only in {seen_by})", MEDIUM,
                 f"struct module at {m.address:#x} is not in the module area, or its "
                 "mkobj.mod does not point back at it")


def _sources_text(sources: set[str]) -> str:
    names = {"list": "the modules list", "kset": "module_kset", "scan": "module memory"}
    return " and ".join(names[s] for s in ("list", "kset", "scan") if s in sources)


# -- system calls ----------------------------------------------------------------------------

def _names_by_number(kernel: LinuxKernel) -> dict[int, str]:
    try:
        return {nr: name for name, nr in kernel.arch.syscall.numbers.items()}
    except AttributeError:
        return {}


def _is_ni(names: list[str]) -> bool:
    return any(n.endswith("sys_ni_syscall") for n in names)


def _expected(table: SyscallTable, nr: int, names: dict[int, str],
              aliases: dict[str, str]) -> tuple[tuple[str, ...], str, bool]:
    """(accepted names or prefixes, how to show it, whether exact names are required)."""
    name = names.get(nr) if nr < table.named_below else None
    if name:
        exact, own = table.prefixes[0] + aliases.get(name, name), table.prefixes[0] + name
        return (exact, own), exact, True
    prefixes = table.prefixes
    return prefixes, (f"a {table.abi} syscall entry "
                      f"({'/'.join(p + '*' for p in prefixes)})"), False


def _syscall_ok(run: _Run, target: int, table: SyscallTable, nr: int,
                names: dict[int, str]) -> tuple[bool, str]:
    """Whether TARGET is right for number NR of TABLE, and what was expected."""
    accepted, shown, exact = _expected(table, nr, names, run.kernel.arch.syscall_aliases)
    if not run.places.in_text(target):
        return False, shown
    at = run.symbols.aliases(target)
    if _is_ni(at):
        return True, shown
    if exact:
        return any(n in accepted for n in at), shown
    return any(n.startswith(accepted) for n in at), shown


def _table_entries(run: _Run, symbol: str) -> tuple[int, list[int]] | None:
    """The table's address and entries: up to the next symbol, trailing zeros (alignment
    padding before it) dropped."""
    address = run.symbols.get(symbol)
    if address is None:
        return None
    end = run.symbols.next_address(address) or address + 8 * MAX_SYSCALLS
    count = max(0, min((end - address) // 8, MAX_SYSCALLS))
    try:
        raw = run.kernel.read(address, 8 * count)
    except GuestMemoryError as exc:
        run.problem(f"{symbol}: {exc}")
        return address, []
    entries = list(struct.unpack(f"<{count}Q", raw))
    while entries and entries[-1] == 0:
        entries.pop()
    return address, entries


def _check_syscalls(run: _Run) -> None:
    arch = run.kernel.arch
    if not arch.syscall_tables:
        run.problem(f"system calls not checked: no system-call tables known for {arch.name}")
        return
    names = _names_by_number(run.kernel)
    dispatchers = {abi: sym for sym, abi in arch.syscall_dispatchers if run.symbols.get(sym)}
    seen_any = False
    for table in arch.syscall_tables:
        found = _table_entries(run, table.symbol)
        if found is None:
            continue
        seen_any = True
        _check_table(run, table, found[0], found[1], names, dispatchers.get(table.abi))
    for symbol, abi in arch.syscall_dispatchers:
        if run.symbols.get(symbol) is not None:
            seen_any = True
            _check_dispatcher(run, symbol, _table_of(arch, abi), names)
    if not seen_any:
        run.problem("no system-call table or dispatcher symbol: system calls not checked")


def _table_of(arch, abi: str) -> SyscallTable:
    return next(t for t in arch.syscall_tables if t.abi == abi)


def _check_table(run: _Run, table: SyscallTable, address: int, entries: list[int],
                 names: dict[int, str], dispatcher: str | None) -> None:
    before = len(run.report.findings)
    note = (f"; this kernel dispatches through {dispatcher}, so this table is the copy "
            "tracing reads, not what system calls run" if dispatcher else "")
    for nr, target in enumerate(entries):
        ok, expected = _syscall_ok(run, target, table, nr, names)
        if ok:
            continue
        name = names.get(nr, "?") if nr < table.named_below else "?"
        run.find("syscall_table", f"{table.symbol}[{nr}] {name}", target, expected,
                 run.places.describe(target), HIGH,
                 f"entry at {address + 8 * nr:#x}{note}")
    run.ran("syscall_table", table.symbol, len(entries), before,
            f"each entry {table.how}" + (f"; not used for dispatch ({dispatcher} is)"
                                         if dispatcher else
                                         "; the table system calls are dispatched through"))


# -- the switch dispatchers (x64_sys_call and friends) ---------------------------------------

def _entrycode():
    """The x86-64 entry-code decoder, imported when a check runs: every CLI command loads
    the views, and only these checks need capstone."""
    from cloudvmi.arch.x86_64 import entrycode

    return entrycode


def _check_dispatcher(run: _Run, symbol: str, table: SyscallTable,
                      names: dict[int, str]) -> None:
    before = len(run.report.findings)
    start = run.symbols.lookup(symbol)
    end = run.symbols.next_address(start) or start
    if not 0 < end - start <= MAX_DISPATCH_BYTES:
        run.problem(f"{symbol}: implausible size {end - start}, not decoded")
        return
    entrycode = _entrycode()
    try:
        code = entrycode.SwitchDispatcher(run.kernel.read(start, end - start), start)
    except GuestMemoryError as exc:
        run.problem(f"{symbol}: {exc}")
        return
    entries = _table_entries(run, table.symbol)
    known = max((nr for nr in names if nr < table.named_below), default=-1)
    count = min(MAX_SYSCALLS, max(code.max_case + 2, len(entries[1]) if entries else 0,
                                  known + 1))
    wrong, side_calls, checked = _follow_all(run, symbol, code, table, count, names)
    for target, numbers in wrong.items():
        _dispatch_finding(run, symbol, table, target, numbers, names)
    for target in sorted(side_calls):
        where, _ = run.places.owner(target)
        # A traced dispatcher calls ftrace first: its trampoline's ops is the ftrace check's.
        if where != "kernel" and not run.in_trampoline(target):
            run.find("syscall_dispatch", f"{symbol} (before dispatching)", target,
                     "no call before the switch", run.places.describe(target),
                     INFO if where == "module" else HIGH,
                     "every system call of this ABI first calls this function")
    run.ran("syscall_dispatch", symbol, checked, before,
            f"the switch decoded from the code in memory, each number's destination "
            f"{table.how}")


def _follow_all(run: _Run, symbol: str, code, table: SyscallTable, count: int,
                names: dict[int, str]) -> tuple[dict[int, list[int]], set[int], int]:
    """Follow numbers 0..COUNT-1 through the switch: (numbers by each wrong destination,
    calls made before dispatching, numbers followed). Code the decoder does not understand
    ends the walk, and the result is partial rather than guessed."""
    def is_entry(address: int) -> bool:
        return any("sys_" in n for n in run.symbols.aliases(address))

    wrong: dict[int, list[int]] = {}
    side_calls: set[int] = set()
    checked = 0
    try:
        for nr in range(count):
            target, calls = code.follow(nr, is_entry, MAX_DISPATCH_STEPS)
            side_calls.update(calls)
            checked += 1
            if not _syscall_ok(run, target, table, nr, names)[0]:
                wrong.setdefault(target, []).append(nr)
    except _entrycode().Undecodable as exc:
        run.problem(f"{symbol}: dispatch not decoded after {checked} numbers ({exc})")
    return wrong, side_calls, checked


def _dispatch_finding(run: _Run, symbol: str, table: SyscallTable, target: int,
                      numbers: list[int], names: dict[int, str]) -> None:
    def label(nr: int) -> str:
        name = names.get(nr) if nr < table.named_below else None
        return f"{nr} {name}" if name else str(nr)

    shown = ", ".join(label(nr) for nr in numbers[:MAX_SHOWN])
    more = f" and {len(numbers) - MAX_SHOWN} more" if len(numbers) > MAX_SHOWN else ""
    expected = (_expected(table, numbers[0], names, run.kernel.arch.syscall_aliases)[1]
                if len(numbers) == 1
                else "each number's own syscall entry")
    run.find("syscall_dispatch", f"{symbol} case {shown}{more}", target, expected,
             run.places.describe(target), HIGH,
             f"{len(numbers)} number(s) of the {table.abi} ABI dispatched here by the code of "
             f"{symbol}")


# -- the interrupt descriptor table ----------------------------------------------------------

def _check_idt(run: _Run) -> None:
    kernel = run.kernel
    before = len(run.report.findings)
    base = run.symbols.get("idt_table")
    if kernel.arch.name != "x86_64" or base is None:
        run.problem("interrupt descriptor table not checked: no x86-64 idt_table")
        return
    try:
        gate = Record(kernel.btf, "gate_struct", {
            "low": "offset_low", "middle": "offset_middle", "high": "offset_high",
            "p": "bits.p"})
    except CloudVMIError as exc:
        run.problem(f"gate_struct not understood: {exc}")
        return
    end = run.symbols.next_address(base) or base + gate.size * IDT_VECTORS
    vectors = max(0, min(IDT_VECTORS, (end - base) // gate.size))
    checked = absent = 0
    for vector in range(vectors):
        try:
            g = gate.read(kernel, base + vector * gate.size)
        except GuestMemoryError as exc:
            run.problem(f"idt_table[{vector}]: {exc}")
            continue
        if not g["p"]:
            absent += 1
            continue
        checked += 1
        handler = g["low"] | g["middle"] << 16 | g["high"] << 32
        problem = _gate_problem(run, vector, handler)
        if problem is not None:
            expected, why = problem
            run.find("idt", f"idt[{vector}] ({vector:#04x})", handler, expected,
                     run.places.describe(handler), HIGH,
                     f"gate at {base + vector * gate.size:#x}: {why}")
    run.ran("idt", "idt_table", checked, before,
            f"each present gate's handler (offset_low/middle/high) is the entry for its "
            f"vector in the kernel's entry text; {absent} gates not present")


# -- arm64's exception vectors ----------------------------------------------------------------

VECTOR_SLOT = 128  # bytes of one entry of an AArch64 vector table (.align 7)
# The 16 entries: (exception level it comes from, whether from AArch32) by group of four, and
# the four kinds in each group, in the architecture's order.
VECTOR_GROUPS = (("el1", False), ("el1", False), ("el0", False), ("el0", True))
VECTOR_KINDS = ("sync", "irq", "fiq", "error")


def _check_vectors(run: _Run) -> None:
    """The kernel's AArch64 vector table (`vectors`, what VBAR_EL1 holds): each 128-byte
    entry may branch out of itself only to its own handler (a symbol naming its exception
    level and kind: el1h_64_sync on 6.x, el1_sync on 5.x) or to __bad_stack, and never
    through a register."""
    from cloudvmi.arch.aarch64.branches import branches

    kernel = run.kernel
    before = len(run.report.findings)
    base = run.symbols.get("vectors")
    if base is None:
        run.problem("exception vectors not checked: no `vectors` symbol")
        return
    try:
        code = kernel.read(base, VECTOR_SLOT * 16)
    except GuestMemoryError as exc:
        run.problem(f"vectors: {exc}")
        return
    for slot in range(16):
        start = base + slot * VECTOR_SLOT
        level, compat = VECTOR_GROUPS[slot // 4]
        kind = VECTOR_KINDS[slot % 4]
        label = f"{level} {kind}" + (" (AArch32)" if compat else "")
        own = False
        for b in branches(code[slot * VECTOR_SLOT:(slot + 1) * VECTOR_SLOT], start):
            if b.target is not None and start <= b.target < start + VECTOR_SLOT:
                continue  # within the entry
            verdict = _vector_target(run, b.target, level, kind, compat)
            own = own or verdict == "own"
            if verdict in ("own", "ok"):
                continue
            run.find("vectors", f"vectors[{slot}] ({label})",
                     b.target if b.target is not None else b.at,
                     f"a branch to this entry's {label} handler",
                     run.places.describe(b.target) if b.target is not None
                     else f"{b.kind} to a register", HIGH,
                     f"{b.kind} at {b.at:#x}: {verdict}")
        if not own:
            run.find("vectors", f"vectors[{slot}] ({label})", start,
                     f"a branch to this entry's {label} handler", "none found", HIGH,
                     f"the entry at {start:#x} never reaches its handler")
    run.ran("vectors", "vectors", 16, before,
            "each entry of the AArch64 vector table leaves itself only for its own "
            "handler (by its exception level and kind) or __bad_stack; the table VBAR_EL1 "
            "holds is not read (a CPU pointed elsewhere is not seen)")


def _vector_target(run: _Run, target: int | None, level: str, kind: str, compat: bool) -> str:
    """"own" (this entry's handler), "ok" (__bad_stack) or why not."""
    if target is None:
        return "a branch through a register"
    if not run.places.in_text(target):
        return "not into kernel text"
    names = run.symbols.aliases(target)
    if "__bad_stack" in names:
        return "ok"
    for name in names:
        parts = name.split("_")
        if (parts[0].startswith(level) and kind in parts
                and compat == ("32" in parts or "compat" in parts)):
            return "own"
    return f"not this entry's handler ({', '.join(names[:MAX_SHOWN]) or 'no symbol'})"


def _entry_text(run: _Run) -> tuple[int, int]:
    lo, hi = run.symbols.get("__entry_text_start"), run.symbols.get("__entry_text_end")
    return (lo, hi) if lo and hi else run.places.text


def _gate_problem(run: _Run, vector: int, handler: int) -> tuple[str, str] | None:
    """None for a good gate, else (expected, why)."""
    want = (f"asm_exc_{EXCEPTIONS[vector]}" if vector in EXCEPTIONS
            else "an interrupt entry (asm_sysvec_*, entry stub, int 0x80 entry)")
    early = _early_handler(run, vector, handler)
    if early is not None:
        return None if early else (want, "not this vector's slot of early_idt_handler_array")
    lo, hi = _entry_text(run)
    if not lo <= handler < hi:
        return want, "not in the kernel's entry text"
    names = run.symbols.aliases(handler)
    exc = [n[len("asm_exc_"):] for n in names if n.startswith("asm_exc_")]
    if exc:
        if EXCEPTIONS.get(vector) in exc:
            return None
        return want, f"the handler of another exception ({', '.join(exc)})"
    if any(n.startswith(INTERRUPT_ENTRIES) for n in names):
        return None if vector >= EXCEPTION_VECTORS else (
            want, "an interrupt entry on an exception vector")
    found = run.symbols.symbolize(handler)
    if found and found[0] in STUB_ARRAYS:
        why = _stub_problem(run, vector, handler)
        return None if why is None else (f"the {found[0]} stub for vector {vector:#x}", why)
    return want, "not an interrupt entry point"


def _early_handler(run: _Run, vector: int, handler: int) -> bool | None:
    """Whether HANDLER is this vector's own early boot handler (None: not in that array).
    Linux leaves them on the exception vectors it never installs a handler for."""
    start = run.symbols.get("early_idt_handler_array")
    if start is None:
        return None
    end = run.symbols.next_address(start) or start
    if not start <= handler < end:
        return None
    stride = (end - start) // EXCEPTION_VECTORS
    return vector < EXCEPTION_VECTORS and stride > 0 and handler - start == vector * stride


def _stub_problem(run: _Run, vector: int, handler: int) -> str | None:
    """An irq entry stub must push its own vector and jump into the entry text."""
    entrycode = _entrycode()
    try:
        pushed, target = entrycode.entry_stub(run.kernel.read(handler, 16), handler)
    except GuestMemoryError as exc:
        return f"stub unreadable: {exc}"
    except entrycode.Undecodable as exc:
        return str(exc)
    if pushed != vector:
        return f"the stub of vector {pushed:#x}"
    lo, hi = _entry_text(run)
    if not lo <= target < hi:
        return "the stub jumps out of the entry text"
    return None


# -- ftrace ----------------------------------------------------------------------------------

class _FtraceReader:
    def __init__(self, kernel: LinuxKernel) -> None:
        btf = kernel.btf
        self.ops = Record(btf, "ftrace_ops", {
            "func": "func", "next": "next", "saved_func": "saved_func",
            "func_hash": "func_hash", "direct_call": "direct_call",
            "trampoline": "trampoline", "trampoline_size": "trampoline_size"},
            optional=("saved_func", "func_hash", "direct_call", "trampoline",
                      "trampoline_size"))
        self.ops_hash = Record(btf, "ftrace_ops_hash", {"filter": "filter_hash"})
        self.hash = Record(btf, "ftrace_hash", {"bits": "size_bits", "buckets": "buckets"})
        self.entry = Record(btf, "ftrace_func_entry", {
            "next": "hlist.next", "ip": "ip", "direct": "direct"}, optional=("direct",))
        self.entry_node = self.entry.struct.offset("hlist")


def _check_ftrace(run: _Run) -> None:
    before = len(run.report.findings)
    head, end = run.symbols.get("ftrace_ops_list"), run.symbols.get("ftrace_list_end")
    if head is None or end is None:
        run.ran("ftrace", "ftrace_ops_list", 0, before, "no ftrace in this kernel")
        return
    try:
        reader = run.kernel.helper(_FtraceReader)
    except CloudVMIError as exc:
        run.problem(f"struct ftrace_ops not understood: {exc}")
        return
    count = 0
    for ops, rec in _ftrace_ops(run, reader, head, end):
        count += 1
        if rec.get("trampoline"):  # the kernel's own, made for this ops in module space
            size = min(max(rec.get("trampoline_size", 0), 1), MAX_TRAMPOLINE)
            run.trampolines.append((rec["trampoline"], rec["trampoline"] + size))
        hooked = _hooked_functions(run, reader, rec.get("func_hash", 0))
        handlers = [("ftrace_ops.func", rec["func"])]
        if rec.get("saved_func") and rec["saved_func"] != rec["func"]:
            handlers.append(("ftrace_ops.saved_func", rec["saved_func"]))
        if rec.get("direct_call"):
            handlers.append(("ftrace_ops.direct", rec["direct_call"]))
        for kind, handler in handlers + hooked[1]:
            _hook(run, "ftrace", kind, ops, handler, hooked[0])
    run.ran("ftrace", "ftrace_ops_list", count, before,
            "each registered ftrace_ops: its handler, saved handler and direct-call "
            "targets, and the functions its filter hash hooks")


def _ftrace_ops(run: _Run, reader: _FtraceReader, head: int,
                end: int) -> Iterator[tuple[int, dict]]:
    """The ftrace_ops of the list, up to ftrace_list_end (bounded, cycle-checked)."""
    try:
        ops = run.kernel.read_u64(head)
    except GuestMemoryError as exc:
        run.problem(f"ftrace_ops_list: {exc}")
        return
    seen: set[int] = set()
    while ops != end:
        if ops in seen:
            run.problem(f"ftrace_ops_list loops back to {ops:#x}")
            return
        if len(seen) >= MAX_FTRACE_OPS:
            run.problem(f"ftrace_ops_list has more than {MAX_FTRACE_OPS} entries")
            return
        seen.add(ops)
        try:
            rec = reader.ops.read(run.kernel, ops)
        except GuestMemoryError as exc:
            run.problem(f"ftrace_ops {ops:#x}: {exc}")
            return
        yield ops, rec
        ops = rec["next"]


def _hooked_functions(run: _Run, reader: _FtraceReader,
                      func_hash: int) -> tuple[list[str], list[tuple[str, int]]]:
    """(the functions the ops' filter hash hooks, per-function direct-call targets)."""
    every = ["every traceable function (empty filter)"]
    if not func_hash:
        return every, []
    kernel = run.kernel
    try:
        filt = reader.ops_hash.read(kernel, func_hash)["filter"]
        if not filt or filt == run.symbols.get("empty_hash"):
            return every, []
        h = reader.hash.read(kernel, filt)
        if h["bits"] > MAX_HASH_BITS:
            run.problem(f"ftrace hash {filt:#x}: {h['bits']} bits")
            return [f"unreadable filter hash {filt:#x}"], []
        n = 1 << h["bits"]
        heads = struct.unpack(f"<{n}Q", kernel.read(h["buckets"], 8 * n))
    except GuestMemoryError as exc:
        run.problem(f"ftrace filter hash at {func_hash:#x}: {exc}")
        return [f"unreadable filter hash {func_hash:#x}"], []
    ips, direct = [], []
    seen: set[int] = set()
    for node in heads:
        while node:
            if node in seen:
                run.problem(f"ftrace filter hash {filt:#x}: a chain loops back to {node:#x}")
                break
            if run.hash_entries >= MAX_HASH_ENTRIES:
                run.problem(f"ftrace filter hashes: more than {MAX_HASH_ENTRIES} entries")
                break
            seen.add(node)
            run.hash_entries += 1
            try:
                e = reader.entry.read(kernel, node - reader.entry_node)
            except GuestMemoryError as exc:
                run.problem(f"ftrace filter entry {node:#x}: {exc}")
                break
            ips.append(e["ip"])
            if e.get("direct"):
                direct.append(("ftrace_ops.direct", e["direct"]))
            node = e["next"]
    ips.sort()
    names = [run.places.describe(ip) for ip in ips[:MAX_HOOKED_NAMES]]
    if len(ips) > MAX_HOOKED_NAMES:
        names.append(f"and {len(ips) - MAX_HOOKED_NAMES} more")
    return names, direct


def _hook(run: _Run, check: str, kind: str, address: int, handler: int,
          hooks: list[str]) -> None:
    """Record a hook; a finding unless its handler runs in kernel text."""
    if not handler:
        return
    where, m = run.places.owner(handler)
    owner = "kernel" if where == "kernel" else f"module {m.name}" if m else "unknown"
    described = run.places.describe(handler)
    run.report.hooks.append(Hook(kind, address, handler, described, owner, hooks))
    if where == "kernel":
        return
    shown = ", ".join(hooks[:MAX_SHOWN]) + (f" and {len(hooks) - MAX_SHOWN} more"
                                              if len(hooks) > MAX_SHOWN else "")
    run.find(check, f"{kind} of {address:#x}", handler, "a handler in kernel text",
             described, INFO if where == "module" else HIGH,
             f"hooks {shown}" + ("" if where == "module" else
                                 f"; the handler is in no listed module ({where})"))


# -- kprobes ---------------------------------------------------------------------------------

class _KprobeReader:
    def __init__(self, kernel: LinuxKernel) -> None:
        btf = kernel.btf
        self.kp = Record(btf, "kprobe", {
            "next": "hlist.next", "addr": "addr", "pre": "pre_handler",
            "post": "post_handler"})
        self.hlist = self.kp.struct.offset("hlist")
        self.list = self.kp.struct.offset("list")
        try:
            self.kret = Record(btf, "kretprobe", {"handler": "handler",
                                                  "entry": "entry_handler"})
            self.kret_kp = self.kret.struct.offset("kp")
        except CloudVMIError:
            self.kret = None


def _check_kprobes(run: _Run) -> None:
    before = len(run.report.findings)
    table = run.symbols.get("kprobe_table")
    if table is None:
        run.ran("kprobe", "kprobe_table", 0, before, "no kprobes in this kernel")
        return
    try:
        reader = run.kernel.helper(_KprobeReader)
    except CloudVMIError as exc:
        run.problem(f"struct kprobe not understood: {exc}")
        return
    end = run.symbols.next_address(table) or table + 8 * MAX_KPROBE_BUCKETS
    slots = max(1, min((end - table) // 8, MAX_KPROBE_BUCKETS))
    buckets = 1 << (slots.bit_length() - 1)  # a power of two: KPROBE_TABLE_SIZE
    try:
        heads = struct.unpack(f"<{buckets}Q", run.kernel.read(table, 8 * buckets))
    except GuestMemoryError as exc:
        run.problem(f"kprobe_table: {exc}")
        return
    seen: set[int] = set()
    for index, first in enumerate(heads):
        _kprobe_chain(run, reader, index, first, seen)
    run.ran("kprobe", "kprobe_table", len(seen), before,
            f"{buckets} buckets: each kprobe's pre and post handlers, the probes under an "
            "aggregate probe, and a kretprobe's own handlers")


def _kprobe_chain(run: _Run, reader: _KprobeReader, index: int, node: int,
                  seen: set[int]) -> None:
    while node:
        if node in seen:
            run.problem(f"kprobe_table[{index}]: the chain loops back to {node:#x}")
            return
        if len(seen) >= MAX_KPROBES:
            run.problem(f"kprobe_table: more than {MAX_KPROBES} kprobes")
            return
        seen.add(node)
        kp = node - reader.hlist
        try:
            rec = reader.kp.read(run.kernel, kp)
        except GuestMemoryError as exc:
            run.problem(f"kprobe {kp:#x}: {exc}")
            return
        _kprobe(run, reader, kp, rec, seen)
        node = rec["next"]


def _kprobe(run: _Run, reader: _KprobeReader, kp: int, rec: dict, seen: set[int],
            nested: bool = False) -> None:
    """The hooks of one kprobe. An aggregate (several probes on one address) holds the real
    ones on its list; they are never aggregates themselves, so NESTED ones are not followed."""
    target = [run.places.describe(rec["addr"])]
    if not nested and rec["pre"] and rec["pre"] == run.symbols.get("aggr_pre_handler"):
        try:
            for node in list_nodes(run.kernel.read_u64, kp + reader.list, MAX_KPROBES):
                child = node - reader.list
                if child in seen or len(seen) >= MAX_KPROBES:
                    run.problem(f"aggregate kprobe {kp:#x}: its list loops or is too long")
                    return
                seen.add(child)
                _kprobe(run, reader, child, reader.kp.read(run.kernel, child), seen, True)
        except (ListWalkError, GuestMemoryError) as exc:
            run.problem(f"aggregate kprobe {kp:#x}: {exc}")
        return
    if (reader.kret is not None and rec["pre"]
            and rec["pre"] == run.symbols.get("pre_handler_kretprobe")):
        try:
            r = reader.kret.read(run.kernel, kp - reader.kret_kp)
        except GuestMemoryError as exc:
            run.problem(f"kretprobe {kp:#x}: {exc}")
            return
        _hook(run, "kprobe", "kretprobe.handler", kp, r["handler"], target)
        _hook(run, "kprobe", "kretprobe.entry_handler", kp, r["entry"], target)
        return
    _hook(run, "kprobe", "kprobe.pre_handler", kp, rec["pre"], target)
    _hook(run, "kprobe", "kprobe.post_handler", kp, rec["post"], target)


# -- the views -------------------------------------------------------------------------------

def check_integrity(kernel: LinuxKernel) -> IntegrityReport:
    """Run every check: findings, what each check covered, and the hooks it listed."""
    run = _Run(kernel)
    _collect_modules(run)  # first: the other checks name module addresses
    # ftrace before the system calls: a traced dispatcher calls an ftrace trampoline first.
    exceptions = _check_vectors if kernel.arch.name == "arm64" else _check_idt
    for check in (_check_ftrace, _check_kprobes, _check_syscalls, exceptions, _check_modules):
        check(run)
    return run.finish()


def _hex(value: int) -> str:
    return f"{value:#x}"


@view(title="Integrity of {vm}", columns=(
    Column("CHECK", "check"), Column("SEVERITY", "severity"), Column("SUBJECT", "subject"),
    Column("ADDRESS", lambda f: _hex(f.address)), Column("EXPECTED", "expected"),
    Column("ACTUAL", "actual"), Column("DETAIL", "detail")))
def integrity(kernel: LinuxKernel) -> ViewResult[Finding]:
    """Check the running kernel against itself: system-call table and dispatch, interrupt
    gates, ftrace and kprobe hooks, hidden modules. A clean kernel gives no findings.

    `integrity-checks` shows what each check covered; `kernel-hooks` lists the hooks."""
    report = check_integrity(kernel)
    return ViewResult(items=report.findings, partial=report.partial)


@view(title="Integrity checks run on {vm}", columns=(
    Column("CHECK", "check"), Column("SUBJECT", "subject"), Column("CHECKED", "checked", True),
    Column("FINDINGS", "findings", True), Column("COVERS", "covers")))
def integrity_checks(kernel: LinuxKernel) -> ViewResult[CheckRun]:
    """What the integrity view checked: each table, dispatcher and structure, how many
    entries, and how (so that a clean result can be told from a check that did nothing)."""
    report = check_integrity(kernel)
    return ViewResult(items=report.runs, partial=report.partial)


@view(title="ftrace and kprobe hooks of {vm}", columns=(
    Column("KIND", "kind"), Column("STRUCT", lambda h: _hex(h.address)),
    Column("HANDLER", "handler_symbol"), Column("OWNER", "owner"),
    Column("HOOKS", lambda h: ", ".join(h.hooks[:MAX_SHOWN])
           + (f" (+{len(h.hooks) - MAX_SHOWN})" if len(h.hooks) > MAX_SHOWN else ""))))
def kernel_hooks(kernel: LinuxKernel) -> ViewResult[Hook]:
    """List registered ftrace_ops and kprobes: each handler, who owns it, what it hooks."""
    run = _Run(kernel)
    _collect_modules(run)
    _check_ftrace(run)
    _check_kprobes(run)
    return ViewResult(items=run.report.hooks, partial=run.finish().partial)
