"""libvirt domains by name: a private libvirtd (Debian's) runs one TCG domain of a lab kernel
and initramfs; the views, a writable operation and an agent reach it as `libvirt:NAME`, with
QMP through libvirt's monitor passthrough and RAM through the QEMU process. The guest's own
view comes over its serial console (a unix socket the domain's XML names)."""

import hashlib
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import libvirt
import libvirt_qemu
import pytest

from cloudvmi.lab import initramfs, kernels
from cloudvmi.lab.console import Console
from cloudvmi.lab.guest import READY

import oracle
from agent_process import Agent
from libvirtd import Libvirtd

DOMAIN = f"lv-web-{uuid.uuid4().hex[:4]}"
KERNEL = "6.1"


def domain_xml(name: str, kernel: kernels.LabKernel, initrd: Path, root: Path) -> str:
    """A TCG domain booting the lab's kernel and initramfs, as the lab boots them (its
    workload, 5-level paging from `-cpu max`), its serial console on a unix socket."""
    return f"""<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>256</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{kernel.vmlinuz}</kernel>
    <initrd>{initrd}</initrd>
    <cmdline>console=ttyS0 panic=-1 quiet cloudvmi.extra=0 cloudvmi.busy=1</cmdline>
  </os>
  <cpu mode='maximum'/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <serial type='unix'>
      <source mode='bind' path='{root / "serial.sock"}'/>
      <log file='{root / "serial.log"}'/>
      <target port='0'/>
    </serial>
    <memballoon model='none'/>
  </devices>
</domain>"""


class Domain:
    """The booted domain as the tests see it: its name, URI and serial console."""

    def __init__(self, name: str, daemon: Libvirtd, root: Path) -> None:
        self.name, self.daemon, self.root = name, daemon, root
        self.uri = daemon.uri
        self.console = Console(root / "serial.sock", root / "console.lock")


@pytest.fixture(scope="module")
def domain(tmp_path_factory):
    root = tmp_path_factory.mktemp("libvirt")
    kernel = kernels.fetch(KERNEL)
    initrd = initramfs.build(kernel)
    daemon = Libvirtd(root / "daemon")
    previous = os.environ.get("CLOUDVMI_LIBVIRT_URI")
    try:
        daemon.start()
        os.environ["CLOUDVMI_LIBVIRT_URI"] = daemon.uri
        conn = libvirt.open(daemon.uri)
        try:
            started = time.monotonic()
            conn.defineXML(domain_xml(DOMAIN, kernel, initrd, root)).create()
        finally:
            conn.close()
        d = Domain(DOMAIN, daemon, root)
        log = root / "serial.log"
        while READY not in (log.read_text(errors="replace") if log.exists() else ""):
            assert time.monotonic() - started < 300, "the domain did not boot"
            assert daemon.qemu_pids(), "the domain's QEMU died"
            time.sleep(0.2)
        d.console.check("true", timeout=60)
        print(f"domain booted in {time.monotonic() - started:.1f} s")
        yield d
    finally:
        if previous is None:
            os.environ.pop("CLOUDVMI_LIBVIRT_URI", None)
        else:
            os.environ["CLOUDVMI_LIBVIRT_URI"] = previous
        daemon.stop()


def cli(domain: Domain, *args: str) -> subprocess.CompletedProcess:
    """The `cloudvmi` command, given the connection as a user would (`--connect`)."""
    env = {k: v for k, v in os.environ.items() if k != "CLOUDVMI_LIBVIRT_URI"}
    return subprocess.run([sys.executable, "-m", "cloudvmi.cli.main", *args,
                           "--connect", domain.uri], capture_output=True, text=True, env=env,
                          timeout=600)


def _user_processes(items) -> dict[int, tuple]:
    return {p["pid"]: (p["ppid"], p["comm"], p["cmdline"]) for p in items
            if not p["kernel_thread"]}


def test_views_by_domain_name_equal_the_guests_own(domain):
    started = time.monotonic()
    ps = cli(domain, "ps", f"libvirt:{domain.name}", "--json")
    assert ps.returncode == 0, ps.stderr
    print(f"`ps libvirt:NAME`: {time.monotonic() - started:.1f} s")
    theirs = oracle.processes(domain)
    mine = _user_processes(json.loads(ps.stdout)["items"])
    for pid, want in theirs.items():
        if want.cmdline:  # user processes (a kernel thread has no command line)
            assert mine.get(pid) == (want.ppid, want.comm, want.cmdline), pid
    assert any(comm == "odd (name) ü" for _, comm, _ in mine.values())

    mods = cli(domain, "modules", f"libvirt:{domain.name}", "--json")
    assert mods.returncode == 0, mods.stderr
    names = sorted(m["name"] for m in json.loads(mods.stdout)["items"])
    assert names == sorted(oracle.modules(domain))

    info = cli(domain, "info", f"libvirt:{domain.name}", "--json")
    assert info.returncode == 0, info.stderr
    assert json.loads(info.stdout)["release"] == domain.console.check("uname -r").strip()


def test_the_domain_is_listed_and_named_plainly(domain):
    """`vms --local` lists the running domain; its plain name resolves when no other finder
    knows it."""
    listed = cli(domain, "vms", "--local", "--json")
    assert listed.returncode == 0, listed.stderr
    assert {"name": domain.name, "kind": "libvirt"}.items() <= next(
        v for v in json.loads(listed.stdout) if v["name"] == domain.name).items()
    from cloudvmi import attach

    with attach(domain.name) as vm:
        assert vm.qmp.key.startswith("libvirt:") and vm.running()
        assert vm.linux.info().release == domain.console.check("uname -r").strip()
    gone = cli(domain, "ps", "libvirt:no-such-domain")
    assert gone.returncode != 0 and "no-such-domain" in gone.stderr


def test_writable_operations_by_domain_name(domain):
    """A guest process killed and a file written through the gdbstub CloudVMI starts over
    libvirt's passthrough (HMP gdbserver), and removed again afterwards."""
    pid = int(domain.console.check("sleep 7777 >/dev/null 2>&1 & echo $!").strip())
    killed = cli(domain, "kill", f"libvirt:{domain.name}", str(pid), "-s", "KILL")
    assert killed.returncode == 0, killed.stderr
    deadline = time.monotonic() + 20
    while domain.console.run(f"kill -0 {pid}")[0] == 0:
        assert time.monotonic() < deadline, "the process was not killed"
        time.sleep(0.2)

    from cloudvmi import attach

    data = os.urandom(100_000)
    with attach(f"libvirt:{domain.name}", writable=True) as vm:
        vm.guest.write_file("/tmp/from-libvirt.bin", data)
        assert vm.guest.read_file("/tmp/from-libvirt.bin") == data
    md5 = domain.console.check("md5sum /tmp/from-libvirt.bin").split()[0]
    assert md5 == hashlib.md5(data).hexdigest()
    conn = libvirt.open(domain.uri)
    try:
        dom = conn.lookupByName(domain.name)
        chardevs = json.loads(libvirt_qemu.qemuMonitorCommand(
            dom, '{"execute": "query-chardev"}', 0))["return"]
        assert not [c for c in chardevs if c["label"] == "gdb"]  # no debugger stays open
        assert dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING
    finally:
        conn.close()


def test_an_agent_serves_the_hosts_domains_by_name(domain, tmp_path):
    from cloudvmi.remote.client import connect

    agent = Agent(tmp_path, settings={"lab": False, "libvirt": True, "libvirt_uri": domain.uri},
                  env={"CLOUDVMI_LIBVIRT_URI": ""})
    try:
        with connect(agent.address, domain.name) as remote:
            assert [v.name for v in remote.node.vms()] == [domain.name]
            theirs = oracle.processes(domain)
            mine = {p.pid: (p.ppid, p.comm, p.cmdline) for p in remote.linux.processes().items
                    if not p.kernel_thread}
            for pid, want in theirs.items():
                if want.cmdline:
                    assert mine.get(pid) == (want.ppid, want.comm, want.cmdline), pid
            remote.guest.write_file("/tmp/through-agent", b"served by name\n")
            assert remote.guest.read_file("/tmp/through-agent") == b"served by name\n"
        assert domain.console.check("cat /tmp/through-agent") == "served by name\n"
    finally:
        agent.stop()


def test_connect_is_taken_anywhere_but_after_a_double_dash():
    from cloudvmi.cli.main import _options_first

    assert _options_first(["ps", "libvirt:web-1", "--connect", "qemu:///x", "--json"]) == [
        "--connect", "qemu:///x", "ps", "libvirt:web-1", "--json"]
    assert _options_first(["ps", "web-1", "--connect=qemu:///x"]) == [
        "--connect=qemu:///x", "ps", "web-1"]
    assert _options_first(["exec", "web-1", "--", "prog", "--connect", "x"]) == [
        "exec", "web-1", "--", "prog", "--connect", "x"]


def test_an_unreachable_libvirtd(tmp_path, monkeypatch):
    """`libvirt:NAME` says why it cannot be found; a plain name is left to the other finders
    (none knows it)."""
    from cloudvmi import attach
    from cloudvmi.errors import CloudVMIError

    monkeypatch.setenv("CLOUDVMI_LIBVIRT_URI", f"qemu:///system?socket={tmp_path / 'none'}")
    with pytest.raises(CloudVMIError, match="cannot connect to libvirt"):
        attach("libvirt:web-1")
    with pytest.raises(CloudVMIError, match="not a known VM"):
        attach("lv-nowhere-1")
