"""The Linux face of a VM: `vm.linux.processes()`, `.threads()`, `.modules()`, `.info()`."""

import contextlib
from collections.abc import Callable
from pathlib import Path

from cloudvmi.memory.base import PhysicalMemory
from cloudvmi.os.linux import kernel as kernel_mod
from cloudvmi.os.linux.kernel import LinuxKernel
from cloudvmi.os.linux.views import info as info_view
from cloudvmi.os.linux.views import modules as modules_view
from cloudvmi.os.linux.views import processes as process_view


class Linux:
    """Locates the kernel once, then serves views; on a live guest each view reads a
    consistent snapshot (the guest is held still) and starts with fresh translations."""

    def __init__(self, phys: PhysicalMemory, profile_cache: Path | None, live: bool,
                 snapshot: Callable[[], contextlib.AbstractContextManager] | None = None) -> None:
        self.phys = phys
        self.profile_cache = profile_cache
        self.live = live
        self._snapshot = snapshot or contextlib.nullcontext
        self._kernel: LinuxKernel | None = None
        self._tasks: process_view.TaskReader | None = None

    @property
    def kernel(self) -> LinuxKernel:
        if self._kernel is None:
            with self._snapshot():
                self._kernel = kernel_mod.locate(self.phys, self.profile_cache)
        return self._kernel

    def _view(self, fn, *args):
        kernel = self.kernel
        with self._snapshot():
            if self.live:
                kernel.invalidate()
            return fn(kernel, *args)

    def task_reader(self) -> process_view.TaskReader:
        if self._tasks is None:
            self._tasks = process_view.TaskReader(self.kernel)
        return self._tasks

    def processes(self):
        return self._view(process_view.processes, self.task_reader())

    def threads(self):
        return self._view(process_view.threads, self.task_reader())

    def modules(self):
        return self._view(modules_view.modules)

    def info(self):
        return self._view(info_view.info)
