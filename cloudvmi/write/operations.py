"""`vm.guest`: the guest operations, each a recipe in cloudvmi.write.recipes declared with
`cloudvmi.capability.operation`, run over one injection engine."""

from typing import Any

from cloudvmi.capability import Capability, Facade
from cloudvmi.write.channel import SyscallChannel
from cloudvmi.write.injector import Injector
from cloudvmi.write.session import DATA, GuestSession


class GuestOps(Facade):
    """What can be changed in a guest from outside, with no agent inside:
    `ops.kill(pid)`, `ops.read_file(path)`, `ops.write_file(path, data)`, `ops.run(argv)`."""

    _facet = "guest"

    def __init__(self, injector: Injector, pid: int | None = None) -> None:
        self.injector = injector
        self.pid = pid  # the process whose thread is hijacked; None: any suitable root one

    def as_process(self, pid: int) -> "GuestOps":
        """The same operations, run in process PID (with its identity and permissions)."""
        return GuestOps(self.injector, pid)

    def session(self, data_size: int = DATA) -> GuestSession:
        """A hijack with a scratch mapping, for a recipe's batches."""
        return GuestSession(self.injector, data_size, self.pid)

    def channel(self) -> SyscallChannel:
        """A held hijack that runs lists of calls, one resume each (`SyscallChannel`)."""
        return SyscallChannel(self)

    def _invoke(self, cap: Capability, args: dict[str, Any]) -> Any:
        return cap.fn(self, **args)
