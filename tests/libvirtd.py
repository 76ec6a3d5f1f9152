"""A private libvirtd for tests: Debian's daemon, run as root in a mount namespace of its own
whose libvirt directories (/etc/libvirt, /run/libvirt, /var/lib/libvirt, /var/cache/libvirt,
/var/log/libvirt) are bind mounts of a temporary directory. So it shares nothing with a libvirtd
the host may run; its client socket sits in that directory too, and the tests reach it as
`qemu:///system?socket=...`. QEMU runs as root without confinement (qemu.conf below): what the
gdbstub's private socket and /proc/<pid>/mem need here. Stopped by PID, its domains first."""

import contextlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

LIBVIRT_DIRS = ("/etc/libvirt", "/run/libvirt", "/var/lib/libvirt", "/var/cache/libvirt",
                "/var/log/libvirt")

QEMU_CONF = """\
user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
security_driver = "none"
stdio_handler = "file"
cgroup_controllers = [ ]
namespaces = [ ]
"""


class Libvirtd:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.sock_dir = root / "sock"
        self.log = root / "libvirtd.log"
        self.uri = f"qemu:///system?socket={self.sock_dir / 'libvirt-sock'}"
        self.proc: subprocess.Popen | None = None
        for d in LIBVIRT_DIRS:
            Path(d).mkdir(parents=True, exist_ok=True)  # mount points (the packages' own dirs)
            (root / "fs" / d.strip("/").replace("/", "_")).mkdir(parents=True, exist_ok=True)
        self.sock_dir.mkdir(mode=0o700, exist_ok=True)
        etc = self.private("/etc/libvirt")
        (etc / "qemu.conf").write_text(QEMU_CONF)
        self.config = root / "libvirtd.conf"
        self.config.write_text(f'unix_sock_dir = "{self.sock_dir}"\n'
                               'auth_unix_rw = "none"\nauth_unix_ro = "none"\n'
                               f'log_outputs = "3:file:{self.log}"\n')

    def private(self, directory: str) -> Path:
        """The temporary directory mounted on DIRECTORY inside the daemon's namespace."""
        return self.root / "fs" / directory.strip("/").replace("/", "_")

    def start(self, timeout: float = 30.0) -> None:
        mounts = " && ".join(f"mount --bind {self.private(d)} {d}" for d in LIBVIRT_DIRS)
        self.proc = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c",
             f"{mounts} && exec libvirtd --config {self.config}"],
            stdout=subprocess.DEVNULL, stderr=(self.root / "stderr").open("w"))
        deadline = time.monotonic() + timeout
        while not (self.sock_dir / "libvirt-sock").exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("libvirtd did not start: "
                                   + (self.root / "stderr").read_text()[-2000:])
            time.sleep(0.1)

    def qemu_pids(self) -> list[int]:
        """The QEMU processes this daemon started (its domains' pid files: QEMU runs
        daemonized, not as the daemon's child)."""
        pids = []
        for f in (self.private("/run/libvirt") / "qemu").glob("*.pid"):
            try:
                pid = int(f.read_text())
                if Path(f"/proc/{pid}/comm").read_text().startswith("qemu"):
                    pids.append(pid)
            except (OSError, ValueError):
                continue
        return pids

    def stop(self) -> None:
        """Destroy its domains, then stop the daemon by PID; kill a QEMU left behind."""
        if self.proc is None:
            return
        left = self.qemu_pids()
        if self.proc.poll() is None:
            names = subprocess.run(["virsh", "-c", self.uri, "list", "--name"],
                                   capture_output=True, text=True).stdout.split()
            for name in names:
                subprocess.run(["virsh", "-c", self.uri, "destroy", name], capture_output=True)
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.proc = None
        shutil.rmtree(self.root / "fs", ignore_errors=True)
