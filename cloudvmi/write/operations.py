"""`vm.guest`: the guest operations, each a recipe in cloudvmi.write.recipes declared with
`cloudvmi.capability.operation`, run over one injection engine."""

from typing import Any

from cloudvmi.capability import Capability, Facade
from cloudvmi.write.channel import CallChannel, SyscallChannel
from cloudvmi.write.injector import Injector
from cloudvmi.write.persistent import GuestHelper, HelperSettings, PersistentChannel
from cloudvmi.write.session import DATA, GuestSession

CHANNEL_MODES = ("stop", "persistent")  # see channel() below


class GuestOps(Facade):
    """What can be changed in a guest from outside, with no agent inside:
    `ops.kill(pid)`, `ops.read_file(path)`, `ops.write_file(path, data)`, `ops.run(argv)`."""

    _facet = "guest"

    def __init__(self, injector: Injector, pid: int | None = None,
                 helpers: dict | None = None) -> None:
        self.injector = injector
        self.pid = pid  # the process whose thread is hijacked; None: any suitable root one
        # Persistent-channel helpers, by the process they were forked from; shared by the
        # as_process() views of one VM, stopped by close().
        self._helpers: dict[int | None, GuestHelper] = {} if helpers is None else helpers

    def as_process(self, pid: int) -> "GuestOps":
        """The same operations, run in process PID (with its identity and permissions)."""
        return GuestOps(self.injector, pid, self._helpers)

    def session(self, data_size: int = DATA, first: int | None = None) -> GuestSession:
        """A hijack with a scratch mapping, for a recipe's batches (FIRST: start the data
        area that small and grow it when a batch needs more)."""
        return GuestSession(self.injector, data_size, self.pid, first=first)

    def channel(self, mode: str = "stop", settings: HelperSettings | None = None) -> CallChannel:
        """A channel that runs lists of calls: "stop", a held hijack with one resume of the
        stopped VM per list (`SyscallChannel`); "persistent", a helper process in the guest
        fed through a mailbox, kept until close() (`PersistentChannel`; SETTINGS apply to a
        helper started now)."""
        if mode == "stop":
            return SyscallChannel(self)
        if mode not in CHANNEL_MODES:
            raise ValueError(f"unknown channel mode {mode!r} ({' or '.join(CHANNEL_MODES)})")
        helper = self._helpers.get(self.pid)
        if helper is None or (helper.pid and not helper.usable):
            if helper is not None:
                helper.stop()
            helper = self._helpers[self.pid] = GuestHelper(self, settings=settings)
        return PersistentChannel(helper)

    def close(self) -> list[str]:
        """Detach: stop every helper this VM's channels started. What happened to each."""
        done = []
        while self._helpers:
            _, helper = self._helpers.popitem()
            done.append(helper.stop())
        return done

    def _invoke(self, cap: Capability, args: dict[str, Any]) -> Any:
        return cap.fn(self, **args)
