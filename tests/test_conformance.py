"""One VM interface: every registered view, operation and VM call, run against a local VM, a
remote VM through a real agent process, and a dump of the same guest, with identical results.

Views are compared while the guest is paused, so the three read the very same memory and
must agree exactly. Operations run on the live guest, through the agent and then locally; a
dump refuses them. A toy view added as one plug-in file is reached from the Python API, the
CLI and a remote client.
"""

import dataclasses
import os
import re
import subprocess
import sys
import textwrap
import urllib.request
import uuid
from pathlib import Path

import pytest

from cloudvmi import capability
from cloudvmi.control.qmp import QMP
from cloudvmi.errors import CloudVMIError
from cloudvmi.interface import missing_members
from cloudvmi.lab import guest as lab
from cloudvmi.remote.client import connect
from cloudvmi.vm import attach
from cloudvmi.write.errors import GuestOSError

from agent_process import Agent

TOY = '''
"""A toy view: how many processes are in each state."""

from collections import Counter
from dataclasses import dataclass

from cloudvmi.capability import Column, view
from cloudvmi.os.linux.views.processes import processes


@dataclass
class StateCount:
    state: str
    count: int


@view(title="States of {vm}", columns=(Column("STATE", "state"), Column("N", "count", True)))
def toy_states(kernel, minimum: int = 1) -> list[StateCount]:
    """Processes per state (states with at least MINIMUM of them)."""
    counts = Counter(p.state for p in processes(kernel).items)
    return [StateCount(s, n) for s, n in sorted(counts.items()) if n >= minimum]
'''


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A guest, its dump taken while paused, and an agent serving it over loopback; the
    guest is left paused for the view comparisons."""
    root = tmp_path_factory.mktemp("conformance")
    (root / "plugins").mkdir()
    (root / "plugins" / "toy_plugin.py").write_text(textwrap.dedent(TOY))
    env = {"CLOUDVMI_PLUGINS": "toy_plugin",
           "PYTHONPATH": os.pathsep.join([str(root / "plugins"), os.environ.get(
               "PYTHONPATH", "")])}
    g = lab.up(f"cf{uuid.uuid4().hex[:6]}", kernel="6.1")
    agent = None
    try:
        dump = root / "guest.elf"
        with QMP(str(g.qmp_path)) as qmp:
            qmp.execute("stop")
            qmp.execute("dump-guest-memory", paging=False, protocol=f"file:{dump}")
        agent = Agent(root, env)
        yield g, dump, agent, env
    finally:
        if agent is not None:
            agent.stop()
        lab.down(g.name)


def _own(caps):
    """CloudVMI's own capabilities (a plug-in loaded by a test is not part of the contract)."""
    return [c for c in caps if c.fn.__module__.startswith("cloudvmi.")]


def _comparable(value):
    """Results as plain data, without how long locating the kernel took on that side."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out = {f.name: _comparable(getattr(value, f.name)) for f in dataclasses.fields(value)}
        for timing in ("locate_seconds", "warm_profile", "located_by"):
            out.pop(timing, None)
        return out
    if isinstance(value, list | tuple):
        return [_comparable(v) for v in value]
    return value


def _reads(vm) -> dict:
    """Every read-only capability on VM (paused: nothing changes between the three)."""
    kernel = vm.linux.kernel
    banner = kernel.symbols.lookup("linux_banner")
    task = kernel.variable("init_task", "struct task_struct")
    out = {f"linux.{c.name}": _comparable(getattr(vm.linux, c.name)(**_sample_args(c)))
           for c in _own(capability.all_capabilities("linux"))}
    out["vm.read_physical"] = vm.read_physical(kernel.image_phys(banner) & ~0xFFF, 3 << 12)
    out["vm.read_virtual"] = vm.read_virtual(banner, 256)
    init = next(p for p in vm.linux.processes().items if p.pid == 1)
    out["vm.read_virtual(pid)"] = vm.read_virtual(_arg_start(kernel, init.address), 16, pid=1)
    out["vm.memory_regions"] = vm.memory_regions()
    profile = vm.kernel_profile()
    out["vm.kernel_profile"] = (profile.text_virt, profile.text_phys, len(profile.btf),
                                profile.profile["banner"])
    out["vm.running"] = vm.running()
    out["typed objects"] = (task.comm.string_(), task.pid.value_(),
                            kernel.object("struct task_struct", init.address).comm.string_())
    return out


SAMPLE_ARGS = {"pid": 1}  # for views that need an argument: the init process


def _sample_args(cap) -> dict:
    return {p.name: SAMPLE_ARGS[p.name] for p in cap.params if p.required}


def _arg_start(kernel, task_address: int) -> int:
    return kernel.object("struct task_struct", task_address).mm.arg_start.value_()


READ_KEYS = {"vm.read_physical", "vm.read_virtual", "vm.memory_regions", "vm.kernel_profile",
             "vm.running"}


def test_views_and_reads_are_identical_on_local_remote_and_dump(setup):
    g, dump, agent, _ = setup
    with attach(g.name, writable=True) as local:
        assert missing_members(local) == []
        mine = _reads(local)
    with connect(agent.address, g.name) as remote:
        assert missing_members(remote) == []
        theirs = _reads(remote)
    with attach(str(dump)) as offline:
        assert missing_members(offline) == []
        dumped = _reads(offline)
    processes = mine["linux.processes"]
    assert processes["partial"] is None and len(processes["items"]) > 40
    for key in mine:
        assert theirs[key] == mine[key], f"remote {key} differs"
        if key == "vm.memory_regions":  # a dump also holds the firmware's ROM
            assert all(r in dumped[key] for r in mine[key])
        else:
            assert dumped[key] == mine[key], f"dump {key} differs"
    covered = {k.split("(")[0] for k in mine}
    declared = {c.key for c in _own(capability.all_capabilities())
                if c.facet == "linux" or c.key in READ_KEYS}
    assert declared <= covered, f"views not in the conformance suite: {declared - covered}"
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{agent.metrics_port}/metrics",
                                     timeout=10).read().decode()
    served = re.search(r'^cloudvmi_agent_calls_total\{op="processes",result="ok"\} (\S+)$',
                       metrics, re.M)
    assert served and float(served[1]) >= 1  # the agent's Prometheus metrics count calls


def _operations(vm, tag: str) -> dict:
    """Every guest operation and VM control call, with what each left behind."""
    ops = vm.guest
    out = {}
    vm.pause()
    out["vm.pause"] = vm.running()
    vm.resume()
    out["vm.resume"] = vm.running()
    out["guest.stat"] = _comparable(ops.stat("/bin/busybox"))
    out["guest.read_file"] = ops.read_file("/proc/sys/kernel/ostype")
    out["guest.listdir"] = [e.name for e in ops.listdir("/bin")]
    path, folder = f"/tmp/conf-{tag}", f"/tmp/conf-dir-{tag}"
    ops.write_file(path, b"conformance\n" * 1000)
    ops.write_file(path, b"end\n", append=True)
    out["guest.write_file"] = ops.read_file(path)[-20:]
    ops.mkdir(folder, 0o750)
    ops.chmod(folder, 0o701)
    ops.chown(folder, 1000, 1000)
    st = ops.stat(folder)
    out["guest.mkdir"] = st.type
    out["guest.chmod"] = st.mode & 0o777
    out["guest.chown"] = (st.uid, st.gid)
    ops.remove(path)
    ops.remove(folder)
    with pytest.raises(GuestOSError) as gone:
        ops.stat(folder)
    out["guest.remove"] = gone.value.errno
    out["guest.sysctl_get"] = ops.sysctl_get("kernel.ostype")
    ops.sysctl_set("kernel.domainname", f"conf-{tag}")
    out["guest.sysctl_set"] = ops.sysctl_get("kernel.domainname").removesuffix(tag)
    ops.link_set("dummy0", True)
    out["guest.link_set"] = int(ops.read_file("/sys/class/net/dummy0/flags"), 16) & 1
    ops.set_address("dummy0", "10.66.0.1/24")
    status, shown = ops.run(["/bin/ip", "addr", "show", "dummy0"])
    out["guest.set_address"] = b"10.66.0.1/24" in shown
    ops.link_set("dummy0", False)
    out["guest.run"] = ops.run(["/bin/sh", "-c", "echo out; echo err >&2; exit 3"])
    status, pid = ops.run(["/bin/sh", "-c", "sleep 1000 >/dev/null 2>&1 & echo $!"])
    pid = int(pid)
    ops.kill(pid, 0)  # exists
    ops.kill(pid, 9)
    # SIGKILL is delivered when the victim next runs: give it up to 5 s to be gone
    state = ops.run(["/bin/sh", "-c", f"for i in $(seq 50); do s=$(cut -d' ' -f3 "
                     f"/proc/{pid}/stat 2>/dev/null); [ -z \"$s\" ] || [ \"$s\" = Z ] && break; "
                     "sleep 0.1; done; echo \"$s\""])
    out["guest.kill"] = state[1].strip() in (b"", b"Z")
    base = vm.linux.kernel.image_phys(vm.linux.kernel.symbols.lookup("linux_banner"))
    same = vm.read_physical(base, 32)
    vm.write_physical(base, same)
    out["vm.write_physical"] = vm.read_physical(base, 32) == same
    banner = vm.linux.kernel.symbols.lookup("linux_banner")
    vm.write_virtual(banner, vm.read_virtual(banner, 16))
    out["vm.write_virtual"] = vm.read_virtual(banner, 13)
    return out


def test_operations_are_identical_local_and_remote_and_refused_on_a_dump(setup):
    g, dump, agent, _ = setup
    try:
        with connect(agent.address, g.name) as remote:
            theirs = _operations(remote, "r")
    finally:
        agent.stop()  # the agent lets go of the VM's monitor
    with attach(g.name, writable=True) as local:
        mine = _operations(local, "l")
    assert theirs == mine
    assert mine["guest.run"] == (3, b"out\nerr\n") and mine["vm.resume"] is True
    declared = {c.key for c in _own(capability.all_capabilities()) if c.key not in READ_KEYS
                and c.facet != "linux"}
    assert declared <= set(mine), f"operations not in the conformance suite: {declared - set(mine)}"
    with attach(str(dump)) as offline:
        for cap in _own(capability.all_capabilities("guest")):
            with pytest.raises(CloudVMIError, match="not a running VM"):
                getattr(offline.guest, cap.name)
        assert offline.running() is False


def test_a_view_in_one_plugin_file_reaches_the_api_the_cli_and_a_remote_client(setup,
                                                                               monkeypatch):
    g, _, agent, env = setup
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.syspath_prepend(env["PYTHONPATH"].split(os.pathsep)[0])
    with attach(g.name) as local:
        mine = local.linux.toy_states()
        assert sum(s.count for s in mine) > 40 and {s.state for s in mine} >= {"S"}
        assert [s.state for s in local.linux.toy_states(minimum=1000)] == []
    cli = subprocess.run([sys.executable, "-m", "cloudvmi.cli.main", "toy-states", g.name,
                          "--minimum", "2"], capture_output=True, text=True, timeout=120,
                         env={**os.environ, **env, "COLUMNS": "150"})
    assert cli.returncode == 0, cli.stderr
    assert "States of" in cli.stdout and any(line.split()[:1] == ["S"]
                                             for line in cli.stdout.splitlines())
    helped = subprocess.run([sys.executable, "-m", "cloudvmi.cli.main", "--help"],
                            capture_output=True, text=True, env={**os.environ, **env})
    assert "toy-states" in helped.stdout and "Processes per state" in helped.stdout
    agent.start()  # again, with the plug-in (the operations test stopped it); it then holds
    # the VM's monitor, so it comes after the local and CLI calls
    with connect(agent.address, g.name) as remote:
        theirs = remote.linux.toy_states()
        assert type(theirs[0]).__name__ == "StateCount"
        assert {s.state for s in theirs} == {s.state for s in mine}


def test_unknown_arguments_are_refused_by_the_agent(setup):
    g, _, agent, _ = setup
    agent.start()
    with connect(agent.address, g.name) as remote, pytest.raises(TypeError):
        remote.read_physical(0, 16, colour="red")
    from cloudvmi.remote.client import RemoteError

    cap = capability.get("vm", "read_physical")
    with connect(agent.address, g.name) as remote, pytest.raises(RemoteError, match="must be"):
        remote.node.invoke(g.name, cap, {"address": "zero", "size": 16})


def test_the_path_of_a_directory_is_a_clear_error(tmp_path):
    with pytest.raises(CloudVMIError, match="neither a QMP socket nor a memory dump"):
        attach(str(tmp_path))
    assert Path(tmp_path).is_dir()
