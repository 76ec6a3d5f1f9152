"""Boot, list, reach and stop lab guests: real QEMU VMs with RAM in a shared-memory file."""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from cloudvmi.control.discovery import process_alive
from cloudvmi.errors import CloudVMIError, MissingDependency
from cloudvmi.lab import initramfs, kernels
from cloudvmi.lab.accel import qemu_accel_args
from cloudvmi.lab.console import Console
from cloudvmi.lab.paths import run_dir

QEMU = "qemu-system-x86_64"
# Per guest architecture: the QEMU binary, its Debian package, the machine, the console.
MACHINES = {
    "x86_64": {"qemu": QEMU, "package": "qemu-system-x86", "machine": "pc",
               "console": "ttyS0"},
    # virt's RAM starts at 1 GiB guest-physical; its UART is a PL011. TCG only: this host
    # runs no arm64 guest in hardware.
    "arm64": {"qemu": "qemu-system-aarch64", "package": "qemu-system-arm",
              "machine": "virt,gic-version=3", "console": "ttyAMA0"},
}
READY = "cloudvmi-lab: workload started"
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,31}")


class LabError(CloudVMIError):
    """A lab guest could not be started, found or stopped."""


@dataclass
class LabGuest:
    """A lab guest's files and facts, read back from its run directory."""

    name: str
    dir: Path
    meta: dict

    @property
    def qmp_path(self) -> Path:
        return self.dir / "qmp.sock"

    @property
    def shm_path(self) -> Path | None:
        return Path(self.meta["shm"]) if self.meta.get("shm") else None

    @property
    def pid(self) -> int:
        return int(self.meta["pid"])

    @property
    def gdb_socket(self) -> str:
        """The unix socket of the guest's gdbstub (in its 0700 directory: root only)."""
        return str(self.dir / "gdb.sock")

    @property
    def console(self) -> Console:
        return Console(self.dir / "serial.sock", self.dir / "console.lock")

    def running(self) -> bool:
        return process_alive(self.pid)


def parse_size(text: str) -> int:
    """'256M', '1G', '512' (MiB) -> MiB."""
    match = re.fullmatch(r"(\d+)([MmGg]?)i?[Bb]?", text.strip())
    if not match:
        raise LabError(f"bad memory size {text!r}; use e.g. 256M or 4G")
    value = int(match.group(1))
    return value * 1024 if match.group(2).lower() == "g" else value


def get(name: str) -> LabGuest:
    meta_file = run_dir() / name / "meta.json"
    if not meta_file.exists():
        raise LabError(f"no lab guest named {name!r} (see `cloudvmi lab ls`)")
    return LabGuest(name, meta_file.parent, json.loads(meta_file.read_text()))


def list_guests() -> list[LabGuest]:
    guests = []
    for meta_file in sorted(run_dir().glob("*/meta.json")):
        try:
            guests.append(LabGuest(meta_file.parent.name, meta_file.parent,
                                   json.loads(meta_file.read_text())))
        except (OSError, ValueError):
            continue
    return guests


def up(
    name: str,
    kernel: str = "6.1",
    flavour: str = "generic",
    mem: str = "256M",
    smp: int = 1,
    paging: int = 5,
    extra_procs: int = 0,
    accel: str = "auto",
    shm: bool = True,
    netns: str | None = None,
    busy: bool = True,
    boot_timeout: float = 300.0,
    arch: str = "x86_64",
) -> LabGuest:
    """Boot a lab guest and wait until its workload runs and its console answers."""
    if not NAME_RE.fullmatch(name):
        raise LabError(f"bad guest name {name!r}: letters, digits, '.', '_' and '-' only")
    if arch not in MACHINES:
        raise LabError(f"unknown architecture {arch!r}; choose from {', '.join(MACHINES)}")
    machine = MACHINES[arch]
    qemu = machine["qemu"]
    if shutil.which(qemu) is None:
        raise MissingDependency(f"{qemu} is needed for {arch} lab guests: "
                                f"apt-get install {machine['package']}")
    if paging not in (4, 5):
        raise LabError("paging must be 4 or 5 (levels)")
    gdir = run_dir() / name
    if (gdir / "meta.json").exists():
        old = get(name)
        if old.running():
            raise LabError(f"lab guest {name!r} is already running (pid {old.pid})")
        _cleanup(old)
    lab_kernel = kernels.fetch(kernel, flavour, arch)
    initrd = initramfs.build(lab_kernel)
    mem_mib = parse_size(mem)
    gdir.mkdir(parents=True, exist_ok=True)
    os.chmod(gdir, 0o700)  # its gdbstub and QMP sockets: no other user may reach them
    shm_path = Path("/dev/shm") / f"cloudvmi-{name}"
    cpu_args = qemu_accel_args(accel) if arch == "x86_64" else _arm64_cpu(accel, paging)
    if paging == 4 and arch == "x86_64":
        cpu_args[-1] += ",la57=off"
    append = (f"console={machine['console']} panic=-1 quiet "
              f"cloudvmi.extra={int(extra_procs)} cloudvmi.busy={int(busy)}")
    cmd = [
        qemu, *cpu_args, "-m", str(mem_mib), "-smp", str(smp), "-nodefaults",
        "-display", "none", "-no-reboot",
        "-kernel", str(lab_kernel.vmlinuz), "-initrd", str(initrd), "-append", append,
        *(["-object", f"memory-backend-file,id=mem,size={mem_mib}M,mem-path={shm_path},share=on",
            "-machine", f"{machine['machine']},memory-backend=mem"] if shm
          else ["-machine", machine["machine"]]),
        "-qmp", f"unix:{gdir / 'qmp.sock'},server=on,wait=off",
        "-gdb", f"unix:{gdir / 'gdb.sock'},server=on,wait=off",
        "-chardev", f"socket,id=ser0,path={gdir / 'serial.sock'},server=on,wait=off,"
                    f"logfile={gdir / 'serial.log'}",
        "-serial", "chardev:ser0",
        "-daemonize", "-pidfile", str(gdir / "qemu.pid"),
    ]
    (gdir / "serial.log").unlink(missing_ok=True)
    if netns:  # its gdbstub then listens on that namespace's loopback (a "host node")
        cmd = ["ip", "netns", "exec", netns, *cmd]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise LabError(f"QEMU failed to start: {proc.stderr.strip()}")
    pid = int((gdir / "qemu.pid").read_text())
    meta = {
        "name": name, "pid": pid, "shm": str(shm_path) if shm else None,
        "kernel": kernel, "arch": arch, "symbols": str(lab_kernel.symbols),
        "flavour": flavour, "release": lab_kernel.release, "mem_mib": mem_mib, "smp": smp,
        "paging": paging, "accel": cpu_args[1], "extra_procs": extra_procs,
        "started": time.time(), "cmdline": cmd, "netns": netns,
    }
    (gdir / "meta.json").write_text(json.dumps(meta, indent=1))
    guest = LabGuest(name, gdir, meta)
    try:
        _wait_ready(guest, boot_timeout)
    except BaseException:
        down(name)
        raise
    return guest


def _arm64_cpu(accel: str, paging: int) -> list[str]:
    """TCG's `max` CPU. Its pointer authentication uses QEMU's cheap implementation-defined
    algorithm (the architected QARMA costs most of TCG's time). PAGING 4 turns FEAT_LPA2 off,
    so a kernel built for 52-bit virtual addresses falls back to 48 bits (4 levels); 5
    leaves it on, as a CPU that has it."""
    if accel == "kvm":
        raise LabError("arm64 lab guests run under TCG on this host (no arm64 KVM)")
    cpu = "max,pauth-impdef=on" + (",lpa2=off" if paging == 4 else "")
    return ["-accel", "tcg", "-cpu", cpu]


def _wait_ready(guest: LabGuest, timeout: float) -> None:
    log = guest.dir / "serial.log"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not guest.running():
            tail = log.read_text(errors="replace")[-1500:] if log.exists() else ""
            raise LabError(f"guest {guest.name} died while booting:\n{tail}")
        if log.exists() and READY in log.read_text(errors="replace"):
            guest.console.check("true", timeout=max(5.0, deadline - time.monotonic()))
            return
        time.sleep(0.2)
    tail = log.read_text(errors="replace")[-1500:] if log.exists() else ""
    raise LabError(f"guest {guest.name} did not boot in {timeout:.0f} s:\n{tail}")


def down(name: str, timeout: float = 10.0) -> None:
    """Stop a guest by its PID (QMP quit first, then signals) and remove its files."""
    guest = get(name)
    if guest.running():
        _qmp_quit(guest.qmp_path)
        deadline = time.monotonic() + timeout
        for sig in (None, signal.SIGTERM, signal.SIGKILL):
            if sig is not None and guest.running():
                os.kill(guest.pid, sig)
            while guest.running() and time.monotonic() < deadline:
                time.sleep(0.05)
            if not guest.running():
                break
            deadline = time.monotonic() + timeout
    _cleanup(guest)


def _qmp_quit(path: Path) -> None:
    """Ask QEMU to quit over its QMP socket (a few JSON lines: the lab needs no client)."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(3)
            s.connect(str(path))
            s.recv(65536)  # greeting
            for command in (b'{"execute": "qmp_capabilities"}', b'{"execute": "quit"}'):
                s.sendall(command + b"\n")
                s.recv(65536)
    except OSError:
        pass  # the signals below stop it


def _cleanup(guest: LabGuest) -> None:
    if guest.shm_path:
        guest.shm_path.unlink(missing_ok=True)
    shutil.rmtree(guest.dir, ignore_errors=True)
