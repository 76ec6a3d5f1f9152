"""Soak (issue 14): many injections on a busy 2-vCPU guest, many clients on one agent, and an
agent killed at random points of its injections. Not a test: it runs for minutes.

    .venv/bin/python bench/bench_soak.py [--ops 10000] [--clients 100] [--kills 100]

1. OPS guest operations through injected system calls (stat, read, kill 0, listdir in turn),
   each a hijack, a batch and a restore whose registers are read back and compared; at the
   end the guest's kernel log has no fault, every workload process lives, its console answers.
2. CLIENTS threads on one agent, each with its own connection, asking for the process list
   and a file; every answer is compared with the reference taken before.
3. KILLS times: an agent starts a redirected `run` in the guest and is killed with SIGKILL
   after a random delay; a new agent's first operation must put the guest back (the journal
   cleared, the hijacked process alive as itself, the console answering).
"""

import argparse
import contextlib
import os
import random
import signal
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))

from cloudvmi.lab import guest as lab  # noqa: E402
from cloudvmi.remote.client import connect  # noqa: E402
from cloudvmi.vm import attach  # noqa: E402

from agent_process import Agent  # noqa: E402
from report import Report  # noqa: E402

FAULTS = ("segfault", "general protection", "Oops", "BUG:", "Kernel panic", "traps:")


def _faults(g) -> list[str]:
    log = g.console.check("dmesg", timeout=60)
    return [line for line in log.splitlines() if any(f in line for f in FAULTS)]


def soak_injections(g, ops: int) -> dict:
    """OPS injected operations; every restore is checked by the injector itself (it reads
    the registers back and raises if one differs)."""
    with attach(g.name) as vm:
        pids = {p.pid for p in vm.linux.processes().items}
    done = errors = 0
    first_error = ""
    start = time.monotonic()
    with attach(g.name, writable=True) as vm:
        guest = vm.guest
        steps = (lambda: guest.stat("/etc/passwd"), lambda: guest.read_file("/proc/version"),
                 lambda: guest.kill(1, 0), lambda: guest.listdir("/run"))
        for i in range(ops):
            try:
                steps[i % len(steps)]()
                done += 1
            except Exception as exc:  # counted: the soak reports every failure
                errors += 1
                first_error = first_error or f"{type(exc).__name__}: {exc}"
        after = {p.pid for p in vm.linux.processes().items}
    seconds = time.monotonic() - start
    lost = sorted(p for p in pids - after if p > 100)  # workload processes that died
    return {"ops": done, "errors": errors, "first_error": first_error, "seconds": seconds,
            "faults": _faults(g), "lost": lost,
            "console": g.console.check("echo alive").strip() == "alive"}


def soak_clients(g, clients: int, root: Path) -> dict:
    (root / "agent-clients").mkdir()
    agent = Agent(root / "agent-clients")
    try:
        with connect(agent.address, g.name) as remote:
            ref_pids = {p.pid for p in remote.linux.processes().items if p.ppid != 2}
            ref_file = remote.guest.read_file("/etc/passwd")
        wrong: list[str] = []
        lost = 0
        lock = threading.Lock()

        def client(k: int) -> None:
            nonlocal lost
            try:
                with connect(agent.address, g.name) as remote:
                    pids = {p.pid for p in remote.linux.processes().items if p.ppid != 2}
                    data = remote.guest.read_file("/etc/passwd")
            except Exception as exc:  # counted
                with lock:
                    lost += 1
                    wrong.append(f"client {k}: {type(exc).__name__}: {exc}")
                return
            if data != ref_file or not ref_pids <= pids | {0}:
                with lock:
                    wrong.append(f"client {k}: answer differs")

        start = time.monotonic()
        threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(600)
        return {"clients": clients, "lost": lost, "wrong": len(wrong) - lost,
                "examples": wrong[:3], "seconds": time.monotonic() - start}
    finally:
        agent.stop()


def soak_kills(g, kills: int, root: Path) -> dict:
    rng = random.Random(14)
    intact = 0
    failures: list[str] = []
    state = root / "state"
    env = {"CLOUDVMI_STATE": str(state)}
    for i in range(kills):
        for where in (f"agent-kill-{i}", f"agent-check-{i}"):
            (root / where).mkdir()
        agent = Agent(root / f"agent-kill-{i}", env=env)

        def run(address: str = agent.address) -> None:
            # The agent is killed under it: an error here is expected and not counted.
            with contextlib.suppress(Exception), connect(address, g.name) as remote:
                remote.guest.run(["/bin/sh", "-c", "sleep 0.3; echo x"])

        caller = threading.Thread(target=run)
        caller.start()
        time.sleep(rng.uniform(0.05, 2.5))
        agent.proc.send_signal(signal.SIGKILL)
        agent.proc.wait(10)
        caller.join(30)
        check = Agent(root / f"agent-check-{i}", env=env)
        try:
            with connect(check.address, g.name) as remote:
                ok = remote.guest.run(["/bin/echo", "again"]) == (0, b"again\n")
            journal_clear = not any((state / "journal").glob("*.json"))
            console = g.console.check("echo intact", timeout=60).strip() == "intact"
            if ok and journal_clear and console:
                intact += 1
            else:
                failures.append(f"kill {i}: run {ok}, journal clear {journal_clear}, "
                                f"console {console}")
        except Exception as exc:  # counted
            failures.append(f"kill {i}: {type(exc).__name__}: {exc}")
        finally:
            check.stop()
    return {"kills": kills, "intact": intact, "failures": failures[:5],
            "faults": _faults(g)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ops", type=int, default=10_000)
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--kills", type=int, default=100)
    args = parser.parse_args()
    report = Report("soak")
    name = f"sk{uuid.uuid4().hex[:6]}"
    g = lab.up(name, kernel="6.1", smp=2, mem="512M")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            inj = soak_injections(g, args.ops)
            print(inj)
            report.add(f"injected operations on a busy 2-vCPU guest ({inj['ops']} done)",
                       inj["errors"], "errors", "0", inj["errors"] == 0,
                       f"({inj['ops'] / inj['seconds']:.1f} ops/s; guest faults "
                       f"{len(inj['faults'])}, processes lost {len(inj['lost'])})")
            report.add("guest faults after the injections", len(inj["faults"]), "lines", "0",
                       not inj["faults"] and not inj["lost"] and inj["console"])
            cl = soak_clients(g, args.clients, root)
            print(cl)
            report.add(f"{cl['clients']} concurrent clients on one agent: lost or wrong",
                       cl["lost"] + cl["wrong"], "answers", "0", cl["lost"] + cl["wrong"] == 0,
                       f"({cl['seconds']:.1f} s for all)")
            kl = soak_kills(g, args.kills, root)
            print(kl)
            report.add(f"agent SIGKILLed during injections: guest intact after ({kl['kills']})",
                       kl["intact"], "times", f"{kl['kills']}", kl["intact"] == kl["kills"],
                       f"(guest faults {len(kl['faults'])})")
    finally:
        lab.down(name)
    print(f"saved {report.save()}")


if __name__ == "__main__":
    main()
