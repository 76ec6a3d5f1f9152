"""One hijack of a guest thread with a private scratch mapping: the batch code, a call table
and a data area. Everything is undone on exit (mapping released, registers restored), on
every path."""

from cloudvmi.write import batch as batch_mod
from cloudvmi.write.errors import InjectionError
from cloudvmi.write.injector import Injector

TABLE_PAGES = 16  # 910 calls a batch
STUB_OFFSET = 0x800  # in the code page, after the batch interpreter
DATA = 256 * 1024  # default data area
DATA_LARGE = 4 << 20  # a syscall channel's (file contents, /proc trees)
DATA_FIRST = 256 * 1024  # what a growable area starts with (most lists need less)
LOWEST_HINT = 1 << 24  # a mapping is never asked for below this (mmap_min_addr and more)


class GuestSession:
    """`with GuestSession(injector, data_size) as s: s.run(batch)`; data lives at s.data.
    With FIRST, the data area starts at FIRST bytes and grows up to DATA_SIZE when a list
    needs more (`grow`): the mapping is populated, and populating megabytes a session never
    uses costs the guest more than the list itself."""

    def __init__(self, injector: Injector, data_size: int = DATA,
                 pid: int | None = None, first: int | None = None) -> None:
        self.injector = injector
        self.abi = injector.abi
        self.pid = pid
        page = injector.arch.page_size
        self.code_size = page
        self.table_size = TABLE_PAGES * page
        self.max_data = self._pages(data_size)
        self.data_size = self._pages(min(first or data_size, data_size))
        self.base = 0
        self._cursor = 0
        self._far = False  # where the last mapping was asked for (see _map)

    def _pages(self, size: int) -> int:
        page = self.injector.arch.page_size
        return (size + page - 1) // page * page

    @property
    def size(self) -> int:
        return self.code_size + self.table_size + self.data_size

    def __enter__(self) -> "GuestSession":
        self.injector.hijack(self.pid)
        try:
            self.base = self._map()
        except BaseException:
            self._undo()
            raise
        return self

    def _map(self) -> int:
        """A scratch mapping of the current size with the batch code and resume stub in it
        (the journal learns where the stub is); its address. Where the stub must sit near
        the thread's PC (arm64's direct branch), the mapping is asked for there; if the
        kernel places it elsewhere, there is no stub, and a thread left inside an injected
        call gets that call's result in its result register."""
        inj = self.injector
        arch = inj.arch
        hint = 0
        if arch.stub_reach:  # below the code (a PIE's start), or above a low static binary;
            # a mapping that replaces another (grow) is asked for at the other distance
            pc = inj.target.saved[arch.pc]
            self._far = not self._far
            away = arch.stub_reach // (2 if self._far else 4)
            hint = pc - away if pc - away >= LOWEST_HINT else pc + away - self.size
            hint = hint // arch.page_size * arch.page_size
        base = inj.map_scratch(self.size, hint=hint)
        inj.write_user(base, arch.batch_code)
        stub = arch.resume_stub(inj.target.saved, base + STUB_OFFSET)
        if stub is not None:
            inj.write_user(base + STUB_OFFSET, stub[0])
        inj.note_resume_stub(base + STUB_OFFSET + stub[1] if stub is not None else 0)
        return base

    def grow(self, need: int) -> None:
        """Make the data area at least NEED bytes (up to the session's most): a new mapping
        four times as large at least, then the old one released (two guest resumes)."""
        if need <= self.data_size or self.data_size >= self.max_data:
            return
        old_base, old_size = self.base, self.size
        self.data_size = min(self.max_data, max(self._pages(need), 4 * self.data_size))
        try:
            self.base = self._map()
        except BaseException:
            self.data_size = old_size - self.code_size - self.table_size
            raise
        self.injector.unmap_scratch(old_base, old_size)

    def __exit__(self, *exc: object) -> None:
        self._undo()

    def _undo(self) -> None:
        inj = self.injector
        try:
            if self.base and inj.target is not None and inj.target.usable:
                inj.unmap_scratch(self.base, self.size)
            self.base = 0
        finally:
            inj.release()

    @property
    def table(self) -> int:
        return self.base + self.code_size

    @property
    def data(self) -> int:
        return self.table + self.table_size

    def batch(self) -> batch_mod.Batch:
        self._cursor = 0
        return batch_mod.Batch(self.table)

    def put(self, payload: bytes) -> int:
        """Copy bytes into the data area (bump allocation, reset by batch()); their address."""
        address = self.alloc(len(payload))
        self.injector.write_user(address, payload)
        return address

    def alloc(self, size: int) -> int:
        size = (size + 15) // 16 * 16
        if self._cursor + size > self.data_size:
            raise InjectionError(f"scratch data area too small ({self.data_size} bytes)")
        address = self.data + self._cursor
        self._cursor += size
        return address

    def read(self, address: int, size: int) -> bytes:
        return self.injector.read_user(address, size)

    def run(self, batch: batch_mod.Batch) -> list[int | None]:
        """Run the batch in the hijacked thread; each call's raw result (None: not run)."""
        if len(batch.calls) * batch_mod.ENTRY.size > self.table_size:
            raise InjectionError("too many calls for one batch")
        self.injector.write_user(batch.table, batch.encode())
        self.injector.run_batch(self.base, batch)
        return batch.decode_results(self.read(batch.table, len(batch.calls) *
                                              batch_mod.ENTRY.size))
