"""One hijack of a guest thread with a private scratch mapping: the batch code, a call table
and a data area. Everything is undone on exit (mapping released, registers restored), on
every path."""

from cloudvmi.write import batch as batch_mod
from cloudvmi.write.injector import PAGE, InjectionError, Injector
from cloudvmi.write.syscalls import errno_of

TABLE_SIZE = 16 * PAGE  # 910 calls a batch


class GuestSession:
    """`with GuestSession(injector, data_size) as s: s.run(batch)`; data lives at s.data."""

    def __init__(self, injector: Injector, data_size: int = 64 * PAGE,
                 pid: int | None = None) -> None:
        self.injector = injector
        self.pid = pid
        self.data_size = (data_size + PAGE - 1) // PAGE * PAGE
        self.size = PAGE + TABLE_SIZE + self.data_size
        self.base = 0
        self._cursor = 0

    def __enter__(self) -> "GuestSession":
        inj = self.injector
        inj.hijack(self.pid)
        try:
            self.base = inj.map_scratch(self.size)
            inj.write_user(self.base, batch_mod.CODE)
        except BaseException:
            self._undo()
            raise
        return self

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
        return self.base + PAGE

    @property
    def data(self) -> int:
        return self.base + PAGE + TABLE_SIZE

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
        if len(batch.calls) * batch_mod.ENTRY.size > TABLE_SIZE:
            raise InjectionError("too many calls for one batch")
        self.injector.write_user(batch.table, batch.encode())
        self.injector.run_batch(self.base, batch)
        return batch.decode_results(self.read(batch.table, len(batch.calls) *
                                              batch_mod.ENTRY.size))


def check(result: int | None, what: str) -> int:
    """A call's result, or a clear error naming the call and the errno."""
    from cloudvmi.write.syscalls import errno_name

    if result is None:
        raise InjectionError(f"{what}: not run (an earlier call failed)")
    errno = errno_of(result)
    if errno is not None:
        raise GuestOSError(errno, f"{what}: {errno_name(errno)}")
    return result


class GuestOSError(InjectionError):
    """A system call in the guest failed; `errno` says why (the guest is intact)."""

    def __init__(self, errno: int, message: str) -> None:
        super().__init__(message)
        self.errno = errno
