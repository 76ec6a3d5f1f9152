"""Volatility 3 on any VM CloudVMI reaches: a `cloudvmi:` URL scheme for Volatility's file
layer, and the kernel's ISF made from the guest's own BTF and kallsyms.

Volatility opens its memory image (`-f URL`) through urllib with every loaded
`VolatilityHandler`; this module adds one for `cloudvmi:TARGET` (TARGET as `attach` or
`VM@NODE` takes it, URL-quoted; `cloudvmi://web-1` too), whose file is the VM's
guest-physical memory (guestfile.py), and a stacker that lays the VM's RAM regions over it.
Everything above — the Linux stacker that finds the kernel by its banner, the page tables,
the plugins — is Volatility's own, unchanged.

Two ways in: `cloudvmi vol VM PLUGIN ...` (run_volatility: the ISF made and cached, the
plugin run in this process), or Volatility's own `vol -p PLUGIN_DIR -s ISF_DIR -f cloudvmi:VM
PLUGIN`, where PLUGIN_DIR (plugin_dir()) holds a module that loads this handler.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import sys
import threading
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

from volatility3.framework import interfaces
from volatility3.framework.layers.physical import FileLayer
from volatility3.framework.layers.resources import VolatilityHandler
from volatility3.framework.layers.segmented import SegmentedLayer

from cloudvmi.ecosystem.guestfile import GuestPhysicalFile
from cloudvmi.errors import CloudVMIError
from cloudvmi.os.linux.isf_export import kernel_isf, write_isf
from cloudvmi.paths import cache_sub

SCHEME = "cloudvmi"
_open_vms: dict[str, object] = {}  # target -> VM, shared by every open of one URL
_owned: set[str] = set()  # the ones this module attached (and closes at exit)
_lock = threading.Lock()


def url_of(target: str) -> str:
    """The Volatility location of TARGET: `cloudvmi:` and TARGET, quoted."""
    return f"{SCHEME}:{urllib.parse.quote(target, safe='')}"


def target_of(url: str) -> str:
    """TARGET of a `cloudvmi:TARGET` or `cloudvmi://TARGET` URL."""
    scheme, _, rest = url.partition(":")
    if scheme.lower() != SCHEME or not rest:
        raise ValueError(f"not a {SCHEME}: URL: {url!r}")
    if rest.startswith("//"):
        rest = rest[2:]
    target = urllib.parse.unquote(rest)
    if not target:
        raise ValueError(f"{url!r} names no VM")
    return target


def _vm(target: str):
    with _lock:
        vm = _open_vms.get(target)
        if vm is None:
            from cloudvmi.remote.inventory import open_target

            vm = _open_vms[target] = open_target(target)
            _owned.add(target)
        return vm


@atexit.register
def _close_owned() -> None:
    with _lock:
        for target in list(_owned):
            with contextlib.suppress(Exception):
                _open_vms.pop(target).close()
        _owned.clear()


@contextlib.contextmanager
def serving(target: str, vm) -> Iterator[None]:
    """Let `cloudvmi:TARGET` read VM (already attached) while inside."""
    with _lock:
        _open_vms[target] = vm
    try:
        yield
    finally:
        with _lock:
            if _open_vms.get(target) is vm:
                del _open_vms[target]


class CloudVMIHandler(VolatilityHandler):
    """urllib handler of `cloudvmi:` URLs: the VM's guest-physical memory as a file."""

    @classmethod
    def non_cached_schemes(cls) -> list[str]:
        return [SCHEME]  # read in place, never copied into Volatility's cache

    @staticmethod
    def default_open(req) -> GuestPhysicalFile | None:
        if req.type != SCHEME:
            return None
        return GuestPhysicalFile(_vm(target_of(req.full_url)))


class CloudVMIRegions(SegmentedLayer):
    """The VM's RAM regions over the file of its guest-physical memory: Volatility's scans
    (the banner, init_task) then skip the holes, which can be most of the file (a 256 MiB
    guest's firmware sits just below 4 GiB)."""

    def _load_segments(self) -> None:
        base = self._context.layers[self._base_layer]
        regions = sorted(_vm(target_of(base.location)).memory_regions())
        self._segments = [(int(start), int(start), int(size), int(size))
                          for start, size in regions if size > 0]


class CloudVMIStacker(interfaces.automagic.StackerLayerInterface):
    """Puts CloudVMIRegions on a `cloudvmi:` file, before any OS stacker looks at it."""

    stack_order = 9

    @classmethod
    def stack(cls, context, layer_name: str, progress_callback=None):
        layer = context.layers[layer_name]
        if not isinstance(layer, FileLayer) or \
                not layer.location.lower().startswith(f"{SCHEME}:"):
            return None
        name = context.layers.free_layer_name("CloudVMIRegions")
        context.config[interfaces.configuration.path_join(name, "base_layer")] = layer_name
        return CloudVMIRegions(context, name, name)


def plugin_dir() -> Path:
    """A Volatility plugin directory (`vol -p DIR`) whose one module loads the handler."""
    return Path(__file__).with_name("volatility_plugins")


# ----- the ISF, cached per kernel build


def isf_dir() -> Path:
    """The symbol directory of the ISFs made here (`vol -s DIR`)."""
    return cache_sub("volatility") / "symbols"


def cached_isf(kernel) -> Path:
    """KERNEL's ISF in isf_dir(), made the first time: named by the build (banner) and its
    types, so Volatility never sees two ISFs for one banner."""
    build = kernel.profile.key
    types = hashlib.sha256(kernel.btf.data).hexdigest()[:12]
    folder = isf_dir() / "linux"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"cloudvmi-{build}-{types}.json.xz"
    if not path.exists():
        write_isf(kernel_isf(kernel), path)
        for old in folder.glob(f"cloudvmi-{build}-*.json.xz"):
            if old != path:
                old.unlink(missing_ok=True)
    return path


# ----- running Volatility


def run_volatility(target: str, vm, args: list[str], hold_still: bool = True) -> int:
    """Volatility's command line (`vol ARGS`) on VM, named TARGET, with CloudVMI's ISF of
    its kernel; its exit status. HOLD_STILL pauses a running VM for the run, so the lists a
    plugin walks do not change under it."""
    from volatility3 import cli

    kernel = vm.linux.kernel
    if kernel.levels != 4:  # its x86-64 layer (Intel32e) walks 4 levels: results would be junk
        raise CloudVMIError(f"{target} uses {kernel.levels}-level paging; Volatility 3 "
                            "translates 4-level page tables only")
    cached_isf(kernel)
    argv = ["vol", "-p", str(plugin_dir()), "-s", str(isf_dir()), "-f", url_of(target),
            *args]
    old_argv = sys.argv
    status = 0
    with serving(target, vm), vm.snapshot() if hold_still else contextlib.nullcontext():
        sys.argv = argv
        try:
            cli.main()
        except SystemExit as exc:
            if isinstance(exc.code, str):
                print(exc.code, file=sys.stderr)
            status = exc.code if isinstance(exc.code, int) else (exc.code is not None)
        finally:
            sys.argv = old_argv
    return int(status)
