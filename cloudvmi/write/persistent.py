"""The persistent channel: a helper process forked in the guest by one injection and fed
through a mailbox that the host writes in guest-physical memory. A list of calls then costs
one mailbox turn, with no debugger round trip, and the VM is not stopped between lists.

The trade-off, said plainly: the helper is an ordinary guest process (comm
"cloudvmi-helper", every signal but SIGKILL and SIGSTOP blocked, its mailbox locked in
memory). A guest root can see it, kill or stop it, ptrace it, rewrite its mailbox, and so
forge what its calls return. The host gives it no more trust than the stop-the-world
channel gets. It reads back only the bytes it asked for, within its own buffers. Before
every write it checks that the mailbox page is still the helper's: the task is alive with
the same mm, and the magic and a per-helper nonce are in place. It stops the helper on
detach. A helper whose host went away exits once the heartbeat has been still for the
lease. The stop-the-world channel (`write/channel.py`) stays the default.
"""

import contextlib
import os
import struct
import threading
import time
from dataclasses import dataclass

from cloudvmi.errors import GuestMemoryError
from cloudvmi.os.linux.views.processes import TaskReader, find_task
from cloudvmi.write import batch as batch_mod
from cloudvmi.write.channel import CallChannel, signed
from cloudvmi.write.errors import InjectionError, InjectionTimeout, errno_of
from cloudvmi.write.session import DATA_LARGE, STUB_OFFSET, TABLE_PAGES

MAGIC = b"CVMIHLP1"
# Mailbox fields: the .equ values of the architecture's helper source.
SEQ, DONE, FIRST, HEARTBEAT, COMMAND, PID, STATE = 0x08, 0x10, 0x18, 0x28, 0x30, 0x38, 0x40
LEASE, SPIN, SIZE, TICK, MASK, NAME, CHILD, ROOT, NONCE = (
    0x48, 0x50, 0x58, 0x60, 0x70, 0x78, 0x88, 0x98, 0xA0)
HEADER = 0xA8
READY, GONE = 1, 2
COMM = b"cloudvmi-helper"
CODE_OFFSET = 0x100  # in the session's code page: after the batch code, before the stub
_U64 = struct.Struct("<Q")


@dataclass
class HelperSettings:
    lease: float = 10.0  # seconds of a still heartbeat after which the helper exits
    keep: float = 300.0  # seconds without a list after which the host lets it expire
    tick: float = 0.001  # its sleep between looks, once idle
    spin: int = 4000  # yields after a list before it starts sleeping
    start_timeout: float = 10.0
    list_timeout: float = 30.0  # one list of calls (a call may block in the guest)


class GuestHelper:
    """One helper process in the guest: `start()`, `run(batch, blob)`, `read()`, `stop()`."""

    def __init__(self, ops, data_size: int = DATA_LARGE,
                 settings: HelperSettings | None = None) -> None:
        self.ops = ops
        inj = ops.injector
        self.kernel = inj.kernel
        self.arch = inj.arch
        self.abi = inj.abi
        self.settings = settings or HelperSettings()
        page = self.arch.page_size
        self.data_size = (data_size + page - 1) // page * page
        self.size = page + TABLE_PAGES * page + self.data_size
        self.base = 0  # the mailbox: the same address in the helper as where it was forked
        self.pid = 0
        self.nonce = os.urandom(8)
        self.broken: str | None = None  # why it can no longer be used
        self.lists = 0
        self.last_used = time.monotonic()
        self._task = self._mm = 0
        self._space = None
        self._seq = 0
        self._memory = threading.Lock()  # the heartbeat thread and the lists
        self.in_use = threading.Lock()  # one program at a time
        self._quit = threading.Event()
        self._beat: threading.Thread | None = None

    @property
    def table(self) -> int:
        return self.base + self.arch.page_size

    @property
    def data(self) -> int:
        return self.table + TABLE_PAGES * self.arch.page_size

    @property
    def usable(self) -> bool:
        return bool(self.pid) and self.broken is None

    # -- start -----------------------------------------------------------------------------
    def _header(self) -> bytes:
        s = self.settings
        h = bytearray(HEADER)
        h[0:8] = MAGIC
        fields = {LEASE: max(1, int(s.lease / s.tick)), SPIN: s.spin, SIZE: self.size,
                  TICK: 0, TICK + 8: int(s.tick * 1e9), MASK: (1 << 64) - 1}
        for offset, v in fields.items():
            _U64.pack_into(h, offset, v)
        h[NAME:NAME + 16] = COMM.ljust(16, b"\0")
        h[ROOT:ROOT + 2] = b"/\0"
        h[NONCE:NONCE + 8] = self.nonce
        return bytes(h)

    def start(self) -> None:
        """Fork the helper from a hijacked thread (held for that one injection only) and
        wait until it reports ready."""
        code = self.arch.helper_code
        if CODE_OFFSET + len(code) > STUB_OFFSET:
            raise InjectionError("the helper's code does not fit the session's code page")
        with self.ops.session(0) as s:
            inj = s.injector
            base = inj.map_scratch(self.size, shared=True)
            try:
                inj.write_user(base, self._header())
                mailbox = inj.kernel.user_space(inj.target.pgd).translate(base)
                inj.write_user(s.base + CODE_OFFSET, code)
                inj.run_code(s.base + CODE_OFFSET, s.base + CODE_OFFSET + self.arch.helper_parked,
                             {self.arch.helper_register: base})
                child = signed(_U64.unpack(inj.read_user(base + CHILD, 8))[0])
            finally:  # the hijacked process lets go; the helper keeps its own mapping
                inj.unmap_scratch(base, self.size)
        if errno_of(child) is not None or child <= 0:
            raise InjectionError(f"fork in the guest failed (errno {-child})")
        self.base = base
        self._await_ready(mailbox)
        self._beat = threading.Thread(target=self._heartbeat, name="cloudvmi-helper-beat",
                                      daemon=True)
        self._beat.start()

    def _await_ready(self, mailbox: int) -> None:
        phys = self.kernel.phys
        deadline = time.monotonic() + self.settings.start_timeout
        while True:
            head = phys.read(mailbox, HEADER)
            if head[:8] != MAGIC or head[NONCE:NONCE + 8] != self.nonce:
                raise InjectionError("the helper's mailbox changed before it started")
            if _U64.unpack_from(head, STATE)[0] == READY:
                break
            if time.monotonic() > deadline:
                raise InjectionTimeout("the guest helper did not report ready in "
                                       f"{self.settings.start_timeout} s (it exits on its own "
                                       "when its lease runs out)")
            time.sleep(0.005)
        self.pid = _U64.unpack_from(head, PID)[0]
        t = find_task(self.kernel, self.pid)
        if t is None or not t["mm"]:
            raise InjectionError(f"the guest helper {self.pid} is not in the task list")
        self._task, self._mm = t["address"], t["mm"]
        pgd = self.kernel.helper(TaskReader).mm.read(self.kernel, self._mm)["pgd"]
        self._space = self.arch.address_space(
            self.kernel.phys, self.kernel.direct_phys_of(pgd), self.kernel.levels,
            self.arch.translation_cache(4096), kernel_root=self.kernel.kernel_pgd)
        if self._mailbox() != mailbox:
            raise InjectionError("the helper's mailbox is not where it was created")

    # -- checks ----------------------------------------------------------------------------
    def _alive(self) -> bool:
        """Whether the task is still our helper (same pid, same mm, not exiting)."""
        try:
            t = self.kernel.helper(TaskReader).task.read(self.kernel, self._task)
        except GuestMemoryError:
            return False
        return t["pid"] == self.pid and t["mm"] == self._mm and not t["exit_state"]

    def _mailbox(self) -> int:
        """The mailbox's physical address, checked afresh: the helper alive, the page
        mapped in it, magic and nonce in place. Otherwise the helper is marked broken."""
        if self.broken is not None:
            raise InjectionError(f"the guest helper cannot be used: {self.broken}")
        if not self._alive():
            self.broken = f"helper process {self.pid} exited"
            raise InjectionError(f"the guest helper cannot be used: {self.broken}")
        self._space.cache.invalidate()
        try:
            address = self._space.translate(self.base)
            head = self.kernel.phys.read(address, HEADER)
        except GuestMemoryError as exc:
            self.broken = f"its mailbox is no longer mapped ({exc})"
            raise InjectionError(f"the guest helper cannot be used: {self.broken}") from exc
        if head[:8] != MAGIC or head[NONCE:NONCE + 8] != self.nonce:
            self.broken = "its mailbox was overwritten"
            raise InjectionError(f"the guest helper cannot be used: {self.broken}")
        return address

    # -- lists of calls ------------------------------------------------------------------
    def run(self, batch: batch_mod.Batch, blob: bytes) -> list[int | None]:
        """Put BLOB at the data area and the table in place, ring the mailbox, wait."""
        phys = self.kernel.phys
        with self._memory:
            mailbox = self._mailbox()
            if blob:
                self._space.write_private(self.data, blob)
            self._space.write_private(batch.table, batch.encode())
            self._seq += 1
            seq = self._seq
            phys.write(mailbox + FIRST, struct.pack("<QQ", batch.table, batch.end))
            phys.write(mailbox + SEQ, _U64.pack(seq))  # the helper starts on this store
        self._await_done(mailbox, seq)
        self.lists += 1
        self.last_used = time.monotonic()
        with self._memory:
            self._mailbox()
            raw = self._space.read(batch.table, len(batch.calls) * batch_mod.ENTRY.size)
        return batch.decode_results(raw)

    def _await_done(self, mailbox: int, seq: int) -> None:
        phys = self.kernel.phys
        start = time.monotonic()
        deadline = start + self.settings.list_timeout
        check = start + 0.05
        while _U64.unpack(phys.read(mailbox + DONE, 8))[0] != seq:
            now = time.monotonic()
            if now > check:  # the helper is still ours and the page still where it was
                with self._memory:
                    if self._mailbox() != mailbox:
                        self.broken = "its mailbox moved during a list"
                        raise InjectionError(f"the guest helper cannot be used: {self.broken}")
                check = now + 0.05
            if now > deadline:
                self.broken = f"a list ran over {self.settings.list_timeout} s"
                raise InjectionTimeout(f"the guest helper did not finish: {self.broken}")
            if now - start > 0.002:
                time.sleep(0.0001)

    def read(self, address: int, size: int) -> bytes:
        if not (self.base <= address and address + size <= self.base + self.size):
            raise InjectionError("a read outside the helper's mapping")
        with self._memory:
            return self._space.read(address, size)

    # -- lifetime ------------------------------------------------------------------------
    def _heartbeat(self) -> None:
        """Beat while the helper is in use; unused for `keep` seconds, ask it to exit."""
        beats = 0
        while not self._quit.wait(self.settings.lease / 4):
            beats += 1
            idle = time.monotonic() - self.last_used > self.settings.keep
            if idle and self.in_use.acquire(blocking=False):
                try:
                    self._ask_exit()
                    self.broken = self.broken or f"unused for {self.settings.keep:.0f} s"
                finally:
                    self.in_use.release()
                return
            with self._memory:
                try:
                    self.kernel.phys.write(self._mailbox() + HEARTBEAT, _U64.pack(beats))
                except (InjectionError, GuestMemoryError):
                    return

    def _ask_exit(self) -> None:
        with self._memory, contextlib.suppress(InjectionError, GuestMemoryError):
            self.kernel.phys.write(self._mailbox() + COMMAND, _U64.pack(1))

    def stop(self) -> str:
        """Make the helper exit: asked through the mailbox, killed by an injection if it does
        not go (it may be blocked in a call). What happened, in words."""
        self._quit.set()
        if self._beat is not None and self._beat is not threading.current_thread():
            self._beat.join(timeout=5)
        if not self.pid:
            return "never started"
        self._ask_exit()
        self.broken = self.broken or "stopped"
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            if not self._alive():
                return "exited"
            time.sleep(0.01)
        self.ops.kill(self.pid, 9)
        return "killed"


class PersistentChannel(CallChannel):
    """A syscall channel through a `GuestHelper` (started on first use, kept for the next
    channel until the VM is detached). `with ops.channel("persistent") as ch:`."""

    def __init__(self, helper: GuestHelper) -> None:
        super().__init__(helper.abi)
        self.helper = helper
        self.max_bytes = helper.data_size

    def __enter__(self) -> "PersistentChannel":
        if not self.helper.in_use.acquire(timeout=self.helper.settings.list_timeout):
            raise InjectionError("the guest helper is busy with another program")
        try:
            if not self.helper.pid:
                self.helper.start()
            elif not self.helper.usable:
                raise InjectionError(f"the guest helper cannot be used: {self.helper.broken}")
        except BaseException:
            self.helper.in_use.release()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.helper.in_use.release()

    def helper_pid(self) -> int:
        return self.helper.pid

    def _area(self) -> tuple[int, int]:
        return self.helper.table, self.helper.data

    def _execute(self, batch: batch_mod.Batch, blob: bytes) -> list[int | None]:
        return self.helper.run(batch, blob)

    def _read(self, address: int, size: int) -> bytes:
        return self.helper.read(address, size)

