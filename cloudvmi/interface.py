"""The one interface every VM object implements: a local VM (a running QEMU), a dump file, and
a VM on another node reached through its agent. Applications and the CLI use only this."""

import contextlib
from collections.abc import Iterator
from typing import Any, Protocol

from cloudvmi import capability
from cloudvmi.capability import Facade


class VMInterface(Protocol):
    name: str

    @property
    def live(self) -> bool:
        """A running VM (views read it now; guest operations can change it)."""

    @property
    def linux(self) -> Any:
        """The views: `vm.linux.processes()`, ...; `vm.linux.kernel`, typed kernel objects."""

    @property
    def guest(self) -> Any:
        """The guest operations: `vm.guest.kill(pid)`, `vm.guest.read_file(path)`, ..."""

    def read_physical(self, address: int, size: int) -> bytes: ...

    def read_virtual(self, address: int, size: int, pid: int | None = None) -> bytes: ...

    def write_physical(self, address: int, data: bytes) -> None: ...

    def write_virtual(self, address: int, data: bytes, pid: int | None = None) -> None: ...

    def running(self) -> bool: ...

    def pause(self) -> None: ...

    def resume(self) -> None: ...

    def exec(self, argv: list[str], stdin: bytes | None = b"", timeout: float = 60.0,
             cwd: str = "/", capture: bool = True, channel: str = "stop") -> Any:
        """Run an unmodified host program whose system calls on guest state are made in
        this guest (CHANNEL: "stop", the VM stopped per list of calls, or "persistent", a
        guest helper kept until close()); its (status, stdout, stderr)."""

    def snapshot(self) -> contextlib.AbstractContextManager[None]:
        """Hold the guest still for a consistent read; a VM paused by others stays paused."""

    def close(self) -> None: ...


@contextlib.contextmanager
def held_still(vm: VMInterface) -> Iterator[None]:
    """The snapshot every VM kind shares: pause if running, resume afterwards."""
    was_running = vm.running()
    if was_running:
        vm.pause()
    try:
        yield
    finally:
        if was_running:
            vm.resume()


MEMBERS = ("name", "live", "linux", "guest", "read_physical", "read_virtual", "write_physical",
           "write_virtual", "running", "pause", "resume", "exec", "snapshot", "close")


def missing_members(vm: object) -> list[str]:
    """The members of VMInterface that VM lacks (looked up without calling properties:
    `guest` of a local VM attaches a debugger)."""
    def served(m: str) -> bool:  # a facade serves its facet's capabilities
        return isinstance(vm, Facade) and capability.by_key(f"{vm._facet}.{m}") is not None

    return [m for m in MEMBERS if not hasattr(type(vm), m)
            and m not in getattr(vm, "__dict__", {}) and not served(m)]
