"""The Linux face of a VM: `vm.linux.NAME(...)` for every view declared with
`cloudvmi.capability.view` (processes, threads, modules, info, ...)."""

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cloudvmi.capability import Capability, Facade
from cloudvmi.errors import CloudVMIError
from cloudvmi.memory.base import PhysicalMemory
from cloudvmi.os.linux import kernel as kernel_mod
from cloudvmi.os.linux.kernel import LinuxKernel


class Linux(Facade):
    """Locates the kernel once, then serves views; on a live guest each view reads a
    consistent snapshot (the guest is held still) and starts with fresh translations."""

    _facet = "linux"

    def __init__(self, phys: PhysicalMemory, profile_cache: Path | None, live: bool,
                 snapshot: Callable[[], contextlib.AbstractContextManager] | None = None,
                 symbols: str | None = None, arch=None, note=None) -> None:
        self.phys = phys
        self.arch = arch  # the guest's CPU (cloudvmi.arch.Arch), as its VM found it
        self.note = note  # the VMCOREINFO note the probe found, if it scanned for one
        self.symbols = symbols  # where to look for types if the kernel has no BTF
        self.profile_cache = profile_cache
        self.live = live
        self._snapshot = snapshot or contextlib.nullcontext
        self._kernel: LinuxKernel | None = None

    @property
    def kernel(self) -> LinuxKernel:
        """The kernel, located once. What locating reads (the image, its symbol and type
        tables, the kernel's page tables) does not change while the guest runs, and every
        candidate is proved before it is taken, so a live guest is not held still for it
        (a cold locate takes a fraction of a second); only if that fails is it tried again
        with the guest held."""
        if self._kernel is None:
            def locate() -> LinuxKernel:
                return kernel_mod.locate(self.phys, self.profile_cache, self.arch,
                                         symbols=self.symbols, note=self.note)

            try:
                self._kernel = locate()
            except CloudVMIError:
                if not self.live:
                    raise
                with self._snapshot():
                    self._kernel = locate()
        return self._kernel

    def ready(self) -> None:
        """Find the kernel now (a cold attach scans RAM), so the caller can show progress."""
        self.kernel  # noqa: B018

    def _invoke(self, cap: Capability, args: dict[str, Any]) -> Any:
        kernel = self.kernel
        with self._snapshot():
            if self.live:
                kernel.invalidate()
            return cap.fn(kernel, **args)
