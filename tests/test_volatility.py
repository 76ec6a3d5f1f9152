"""Volatility 3 with CloudVMI: Volatility's own Linux plugins, run as the `vol` program, on a
dump of a real 4-level guest with the ISF `cloudvmi isf` made from the guest's memory, and on a
running guest through the `cloudvmi:` location (`cloudvmi vol`), agree with CloudVMI's views
and with the guest's own ps and /proc/modules.

One guest is booted for the module (6.1, 4-level paging), its own view captured, then dumped.
With $CLOUDVMI_VOL_IMAGE naming a kept folder of the same shape (guest.elf, ps, truth/modules,
as tests/truth.py and _capture keep them) nothing is booted, and the location test reads that
dump instead of a running guest. Volatility gets a cache directory of its own (so it indexes
our ISF and no other) and --offline."""

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from cloudvmi.control.qmp import QMP
from cloudvmi.lab import guest as lab
from cloudvmi.vm import attach

IMAGE_ENV = "CLOUDVMI_VOL_IMAGE"
VOL = str(Path(sys.executable).with_name("vol"))  # the environment's own `vol` program
PROCESS_PLUGINS = ("linux.pslist", "linux.psaux")
timings: dict[str, float] = {}


@pytest.fixture(scope="module")
def guest4(tmp_path_factory):
    """(lab guest or None, folder with guest.elf, ps, truth/modules): a running 4-level 6.1
    guest whose own ps and /proc/modules were read just before it was paused and dumped
    (then let run again); or the kept folder $CLOUDVMI_VOL_IMAGE, with no guest."""
    kept = os.environ.get(IMAGE_ENV)
    if kept:
        yield None, Path(kept)
        return
    root = tmp_path_factory.mktemp("vol-image")
    g = lab.up(f"vo{uuid.uuid4().hex[:6]}", kernel="6.1", paging=4)
    try:
        (root / "truth").mkdir()
        (root / "ps").write_text(g.console.check("ps -o pid,ppid,comm,args"))
        (root / "truth" / "modules").write_text(g.console.check("cat /proc/modules"))
        with QMP(str(g.qmp_path)) as qmp:
            qmp.execute("stop")
            qmp.execute("dump-guest-memory", paging=False,
                        protocol=f"file:{root / 'guest.elf'}")
            qmp.execute("cont")
        yield g, root
    finally:
        lab.down(g.name)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """The environment of every program run here: CloudVMI and Volatility caches of their
    own, this checkout first on the module path."""
    home = tmp_path_factory.mktemp("vol-cache")
    e = dict(os.environ, XDG_CACHE_HOME=str(home / "xdg"), CLOUDVMI_CACHE=str(home / "cvmi"))
    e["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).parents[1]),
                                                    os.environ.get("PYTHONPATH")]))
    return e


@pytest.fixture(scope="module")
def isf_dir(guest4, env, tmp_path_factory):
    """A symbol folder holding only the ISF `cloudvmi isf` wrote for the dump."""
    _, image = guest4
    symbols = tmp_path_factory.mktemp("symbols")
    out = symbols / "linux" / "guest.json.xz"
    out.parent.mkdir()
    start = time.perf_counter()
    done = _run([sys.executable, "-m", "cloudvmi.cli.main", "isf", str(image / "guest.elf"),
                 "-o", str(out), "--json"], env)
    timings["cloudvmi isf"] = time.perf_counter() - start
    report = json.loads(done.stdout)
    assert report["path"] == str(out) and report["bytes"] == out.stat().st_size
    assert report["types"] > 5000 and report["symbols"] > 50000
    timings["ISF bytes"] = report["bytes"]
    return symbols


@pytest.fixture(scope="module")
def dumped(guest4):
    """CloudVMI's own views of the dump."""
    _, image = guest4
    vm = attach(str(image / "guest.elf"), profile_cache=None)
    try:
        assert vm.linux.info().paging_levels == 4
        yield vm.linux.processes().items, vm.linux.modules().items
    finally:
        vm.close()


@pytest.fixture(scope="module")
def vol_on_dump(guest4, isf_dir, env):
    """vol PLUGIN -> its JSON rows, run on the dump with our ISF (each plugin once)."""
    _, image = guest4
    rows: dict[str, list] = {}

    def run(plugin: str) -> list[dict]:
        if plugin not in rows:
            start = time.perf_counter()
            done = _run([VOL, "-q", "--offline", "-s", str(isf_dir), "-f",
                         str(image / "guest.elf"), "-r", "json", plugin], env)
            timings[f"vol {plugin} (dump)"] = time.perf_counter() - start
            rows[plugin] = json.loads(done.stdout)
        return rows[plugin]

    return run


@contextlib.contextmanager
def paused(target: str):
    """CloudVMI's processes of TARGET, which stays paused (and not attached: QEMU takes one
    QMP client at a time) until the block ends."""
    with attach(target, profile_cache=None) as vm:
        vm.pause()
        try:
            ours = vm.linux.processes().items
        except BaseException:
            vm.resume()
            raise
    try:
        yield ours
    finally:
        with attach(target, profile_cache=None) as vm:
            vm.resume()


def _run(argv: list[str], env: dict) -> subprocess.CompletedProcess:
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, (argv, done.stderr[-3000:])
    return done


def _guest_ps(image: Path) -> dict[int, tuple[int, str]]:
    """The guest's own ps: pid -> (ppid, the rest of the line: comm, then args)."""
    out = {}
    for line in (image / "ps").read_text().splitlines()[1:]:
        f = line.split(None, 2)
        if len(f) == 3 and f[0].isdigit() and f[1].isdigit():
            out[int(f[0])] = (int(f[1]), f[2])
    return out


def _same_comm(ours, theirs: str) -> bool:
    """Volatility prints task->comm; CloudVMI, as /proc does, a kernel thread's full name
    and a workqueue worker's current work ("kworker/0:1-events"), of which comm is the start."""
    return ours.comm == theirs or ours.kernel_thread and ours.comm.startswith(theirs)


def _check_against_ours(rows: list[dict], ours) -> None:
    """The same processes, parents and names; but zombies, which Volatility's task check
    leaves out (an exited task has no nsproxy, and it wants one)."""
    mine = {p.pid: p for p in ours if p.state != "Z"}
    theirs = {r["PID"]: r for r in rows}
    assert set(theirs) == set(mine)
    for pid, r in theirs.items():
        assert r["PPID"] == mine[pid].ppid, pid
        assert _same_comm(mine[pid], r["COMM"]), (pid, mine[pid].comm, r["COMM"])


def _check_against_guest(rows: list[dict], image: Path, ours) -> None:
    """Processes the guest's ps listed just before the dump: all there, with their parents
    and names, but for ps itself, zombies (see _check_against_ours) and a task or two that
    ended in between (kworkers come and go)."""
    ps = _guest_ps(image)
    theirs = {r["PID"]: r for r in rows}
    gone = {pid for pid in ps if pid not in theirs}
    gone -= {pid for pid, (_, rest) in ps.items() if rest.startswith("ps ")}
    gone -= {p.pid for p in ours if p.state == "Z"}
    assert len(gone) <= 2, f"in the guest's ps, not in Volatility's: {sorted(gone)}"
    new = {pid for pid in theirs if pid not in ps}
    assert all(theirs[pid]["COMM"].startswith("kworker") for pid in new), new
    for pid, r in theirs.items():
        if pid in ps:
            ppid, rest = ps[pid]
            assert r["PPID"] == ppid, pid
            assert rest.startswith(r["COMM"][:15]), (pid, rest, r["COMM"])


def test_isf_is_valid_and_linked(guest4, isf_dir):
    """What `cloudvmi isf` wrote: Volatility's schema, the guest's banner, and addresses as
    linked (Volatility undoes KASLR itself)."""
    import jsonschema
    import volatility3

    from cloudvmi.arch.x86_64 import ARCH
    from cloudvmi.os.linux.isf import isf_banner, load_isf

    isf = load_isf(isf_dir / "linux" / "guest.json.xz")
    schema = json.loads((Path(volatility3.__file__).parent / "schemas" /
                         "schema-6.2.0.json").read_text())
    jsonschema.Draft4Validator(schema).validate(
        {**isf, "user_types": {n: isf["user_types"][n] for n in (
            "task_struct", "list_head", "module", "mm_struct", "maple_tree")}})
    assert isf_banner(isf).startswith(b"Linux version 6.1.")
    symbols = isf["symbols"]
    assert symbols["_text"]["address"] == ARCH.default_text
    for name, kind in (("init_task", "task_struct"), ("modules", "list_head"),
                       ("init_mm", "mm_struct"), ("init_files", "files_struct")):
        assert symbols[name]["type"] == {"kind": "struct", "name": kind}
    assert symbols["taint_flags"]["type"] == {  # TAINT_FLAGS_COUNT of 6.1, counted in memory
        "kind": "array", "count": 19, "subtype": {"kind": "struct", "name": "taint_flag"}}
    tk_core = isf["user_types"][symbols["tk_core"]["type"]["name"]]  # an anonymous struct
    assert set(tk_core["fields"]) == {"seq", "timekeeper"}
    assert "init_top_pgt" in symbols and "linux_banner" in symbols


def test_pslist_on_dump(guest4, dumped, vol_on_dump):
    _, image = guest4
    rows = vol_on_dump("linux.pslist")
    _check_against_ours(rows, dumped[0])
    _check_against_guest(rows, image, dumped[0])
    assert all(r["CREATION TIME"] for r in rows)  # tk_core typed: boot time known


def test_psaux_on_dump(guest4, dumped, vol_on_dump):
    _, image = guest4
    rows = vol_on_dump("linux.psaux")
    _check_against_ours(rows, dumped[0])
    _check_against_guest(rows, image, dumped[0])
    mine = {p.pid: p for p in dumped[0]}
    for r in rows:
        p = mine[r["PID"]]
        raw = sum(len(a.encode()) + 1 for a in p.cmdline)
        if p.kernel_thread:
            assert r["ARGS"] == f"[{r['COMM']}]"
        elif r["ARGS"] is None:  # Volatility reads at most 4096 bytes of arguments
            assert raw > 4096, p
        else:
            assert r["ARGS"] == " ".join(p.cmdline), p
    assert sum(not mine[r["PID"]].kernel_thread and bool(r["ARGS"]) for r in rows) >= 10


def test_lsmod_on_dump(guest4, dumped, vol_on_dump):
    _, image = guest4
    rows = vol_on_dump("linux.lsmod")
    theirs = {r["Module Name"]: r["Code Size"] for r in rows}
    assert set(theirs) == {m.name for m in dumped[1]}
    guest = {}
    for line in (image / "truth" / "modules").read_text().splitlines():
        f = line.split()
        if len(f) >= 2:
            guest[f[0]] = int(f[1])
    assert theirs == guest and len(guest) >= 5


def test_pslist_through_cloudvmi(guest4, env, isf_dir):
    """`cloudvmi vol VM linux.pslist`: Volatility reading the running guest through the
    cloudvmi: location (with the ISF it makes and caches itself) sees CloudVMI's processes.
    The guest is held still for both reads (the CLI leaves a guest paused by others paused)."""
    g, image = guest4
    target = str(g.qmp_path) if g is not None else str(image / "guest.elf")
    with paused(target) as ours:
        start = time.perf_counter()
        done = _run([sys.executable, "-m", "cloudvmi.cli.main", "vol", target, "-q",
                     "--offline", "-r", "json", "linux.pslist"], env)
        timings["cloudvmi vol linux.pslist (live)" if g else
               "cloudvmi vol linux.pslist (dump)"] = time.perf_counter() - start
    rows = json.loads(done.stdout)
    _check_against_ours(rows, ours)
    assert len(rows) > 40
    cached = list((Path(env["CLOUDVMI_CACHE"]) / "volatility" / "symbols" / "linux").iterdir())
    assert len(cached) == 1 and cached[0].name.endswith(".json.xz")


def test_pslist_through_an_agent(guest4, env, isf_dir, tmp_path):
    """`cloudvmi vol VM@NODE`: the same through a real agent process (loopback), every read
    of Volatility's a call to the agent."""
    from agent_process import Agent

    g, _ = guest4
    if g is None:
        pytest.skip(f"${IMAGE_ENV}: a kept image, no running guest for an agent to serve")
    with paused(str(g.qmp_path)) as ours:  # the agent attaches after, and lets go before
        agent = Agent(tmp_path)
        try:
            inventory = tmp_path / "inventory.toml"
            inventory.write_text(f'[[node]]\nname = "loopback"\naddress = "{agent.address}"\n'
                                 'insecure = true\n')
            start = time.perf_counter()
            done = _run([sys.executable, "-m", "cloudvmi.cli.main", "vol", f"{g.name}@loopback",
                         "-q", "--offline", "-r", "json", "linux.pslist"],
                        {**env, "CLOUDVMI_INVENTORY": str(inventory)})
            timings["cloudvmi vol linux.pslist (agent)"] = time.perf_counter() - start
        finally:
            agent.stop()
    rows = json.loads(done.stdout)
    _check_against_ours(rows, ours)
    assert len(rows) > 40


def test_guest_physical_file(guest4):
    """The file Volatility reads: offset N is guest-physical address N, holes read as zeros,
    reads across blocks and regions are the VM's bytes."""
    from cloudvmi.ecosystem.guestfile import BLOCK, GuestPhysicalFile

    _, image = guest4
    with attach(str(image / "guest.elf"), profile_cache=None) as vm:
        regions = vm.memory_regions()
        f = GuestPhysicalFile(vm)
        end = max(start + size for start, size in regions)
        assert f.seek(0, os.SEEK_END) == end and f.read(10) == b""
        for start, size in regions:
            f.seek(start + BLOCK - 100)  # across a block boundary, through the cache
            assert f.read(300) == vm.read_physical(start + BLOCK - 100, 300)
            f.seek(start + size - 32)  # the end of a region, then a hole (or the end)
            tail = f.read(64)
            assert tail[:32] == vm.read_physical(start + size - 32, 32)
            after = start + size
            if any(s <= after < s + z for s, z in regions):  # another region goes on
                assert tail[32:] == vm.read_physical(after, len(tail) - 32)
            else:
                assert tail[32:] == bytes(len(tail) - 32)
        f.seek(0)
        assert f.read(3 * BLOCK + 5) == vm.read_physical(0, 3 * BLOCK + 5)  # blocks straight in


def test_location_urls_and_plugin_dir(capsys):
    """The plugin folder Volatility loads (`vol -p`) ships with the package."""
    from cloudvmi.ecosystem.volatility import CloudVMIHandler, plugin_dir, target_of, url_of

    assert (plugin_dir() / "cloudvmi_location.py").is_file()
    assert CloudVMIHandler.non_cached_schemes() == ["cloudvmi"]
    for target in ("web-1", "web-1@node2", "/run/vm/a b.qmp", "guest.elf"):
        assert target_of(url_of(target)) == target
    assert target_of("cloudvmi://web-1@node2") == "web-1@node2"
    with pytest.raises(ValueError):
        target_of("file:///etc/passwd")
    assert shutil.which(VOL) or Path(VOL).exists()
    if timings:
        with capsys.disabled():
            print("\nVolatility timings: " + ", ".join(
                f"{k} {v:.1f}s" if isinstance(v, float) else f"{k} {v}"
                for k, v in timings.items()))
