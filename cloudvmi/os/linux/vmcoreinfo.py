"""The kernel's VMCOREINFO note, found in guest RAM: what the kernel says about itself.

Every kernel built with kdump support (CONFIG_VMCORE_INFO, CONFIG_CRASH_CORE before 6.9)
writes at boot an ELF note named "VMCOREINFO" into a page of its own: release, build id, the
KASLR offset, phys_base, the page-table root and depth, and from 6.0 the addresses of the
kallsyms tables. Crash tools read it from dumps; here it is read from live RAM.

A guest can plant a look-alike note anywhere in memory it controls, so a note is only a
claim: the caller accepts it once the kernel image it points at proves it (kallsyms decode
at its addresses, the banner names its release, the page tables map its _stext).
"""

import re
from collections.abc import Iterator
from dataclasses import dataclass

from cloudvmi.errors import CloudVMIError
from cloudvmi.memory.base import PhysicalMemory

NOTE_NAME = b"VMCOREINFO\0"
MAX_DESC = 64 << 10        # VMCOREINFO_BYTES is one page; leave room for large pages
MAX_NOTES = 64             # look-alikes examined before giving up (planted ones are hostile)
NOTE_NAME_AT = 12          # the name's offset in a note that starts a page
_LINE = re.compile(rb"([A-Za-z0-9_()./\-]{1,128})=([\x20-\x7e]{0,512})")


@dataclass(frozen=True)
class VmcoreInfo:
    """One parsed note: KEY=VALUE lines as the kernel wrote them."""

    paddr: int  # physical address of the note's text
    fields: dict[str, str]

    def get(self, key: str) -> str | None:
        return self.fields.get(key)

    def symbol(self, name: str) -> int | None:
        """SYMBOL(name)=hex address."""
        return _integer(self.fields.get(f"SYMBOL({name})"), 16)

    def number(self, name: str) -> int | None:
        """NUMBER(name)=decimal (signed) or 0x-prefixed hex."""
        return _integer(self.fields.get(f"NUMBER({name})"), 0)

    @property
    def release(self) -> str | None:
        return self.fields.get("OSRELEASE")

    @property
    def kaslr_offset(self) -> int | None:
        return _integer(self.fields.get("KERNELOFFSET"), 16)

    def summary(self) -> str:
        return f"VMCOREINFO at {self.paddr:#x} (release {self.release!r})"


def _integer(text: str | None, base: int) -> int | None:
    if text is None:
        return None
    try:
        return int(text, base)
    except ValueError:
        return None


def parse(text: bytes, paddr: int = 0) -> VmcoreInfo | None:
    """A note's text as fields; None unless every line is KEY=VALUE and OSRELEASE leads."""
    text = text.split(b"\0", 1)[0]
    if not text.startswith(b"OSRELEASE="):
        return None
    fields: dict[str, str] = {}
    for line in text.split(b"\n"):
        if not line:
            continue
        match = _LINE.fullmatch(line)
        if match is None:
            return None
        fields.setdefault(match[1].decode(), match[2].decode())
    return VmcoreInfo(paddr, fields)


def find_vmcoreinfo(phys: PhysicalMemory) -> Iterator[VmcoreInfo]:
    """Each well-formed VMCOREINFO note in RAM (bounded): first those at the start of a page,
    where the kernel allocates its note (alloc_pages_exact), found by looking at one place
    per page where the source can (a scan of a 4 GiB guest's RAM took 2 s, the note being
    high in it); then, if the caller asks for more, every other in address order."""
    seen: set[int] = set()
    budget = [MAX_NOTES]
    for at in phys.find_at_page_offset(NOTE_NAME, NOTE_NAME_AT):
        seen.add(at)
        info = _note_at(phys, at, budget)
        if info is not None:
            yield info
        if not budget[0]:
            return
    for at in phys.find(NOTE_NAME):
        if at in seen:
            continue
        info = _note_at(phys, at, budget)
        if info is not None:
            yield info
        if not budget[0]:
            return


def _note_at(phys: PhysicalMemory, at: int, budget: list[int]) -> VmcoreInfo | None:
    """The note whose name is at AT, if its header and text are well formed; each call
    spends one of BUDGET (look-alikes examined)."""
    budget[0] -= 1
    start = at - 12  # Elf64_Nhdr: namesz, descsz, type (4 bytes each), then the name
    try:
        header = phys.read(start, 12)
    except CloudVMIError:
        return None
    namesz = int.from_bytes(header[0:4], "little")
    descsz = int.from_bytes(header[4:8], "little")
    kind = int.from_bytes(header[8:12], "little")
    if namesz != len(NOTE_NAME) or kind != 0 or not 0 < descsz <= MAX_DESC:
        return None
    desc = at + 12  # the name, 11 bytes, padded to 4
    try:
        return parse(phys.read(desc, descsz), desc)
    except CloudVMIError:
        return None
