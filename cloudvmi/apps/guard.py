"""`cloudvmi guard`: a process and network policy, checked from outside and enforced.

The processes and sockets come from the guest's memory (the views), not from anything the
guest reports, so a process cannot hide from a rule by lying in /proc. Actions are guest
operations (`vm.guest.kill`, `.chmod`): through an agent each one is authorized and audited
there before it touches the guest.

A policy is TOML:

    [[rule]]
    name = "no-miners"
    action = "kill"              # report | kill | stop | quarantine
    match = { name = "xmrig*", uid = [1000, 1001] }

Every key of `match` must hold: name (comm, a glob), exe (path, a glob), cmdline (a regular
expression searched in the command line joined by spaces), uid (one or a list), parent (the
parent's comm, a glob), sha256 (of the executable's content, read from the guest),
listen_port (a listening TCP/UDP socket the process holds), remote (a network the process
has a connection to, e.g. "10.0.0.0/8").
"""

import contextlib
import fnmatch
import hashlib
import ipaddress
import re
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cloudvmi.apps.events import Event, Events, Metrics
from cloudvmi.apps.targets import Target, each
from cloudvmi.errors import CloudVMIError

ACTIONS = ("report", "kill", "stop", "quarantine")
MATCH_KEYS = ("name", "exe", "cmdline", "uid", "parent", "sha256", "listen_port", "remote")
SIGKILL, SIGSTOP = 9, 19
MAX_EXE = 256 << 20  # bytes of an executable hashed for a sha256 rule


@dataclass
class Rule:
    name: str
    action: str
    match: dict[str, Any]
    cmdline_re: re.Pattern | None = None
    networks: list = field(default_factory=list)

    @property
    def needs_sockets(self) -> bool:
        return "listen_port" in self.match or "remote" in self.match


@dataclass
class Policy:
    rules: list[Rule]

    @classmethod
    def load(cls, path: str | Path) -> "Policy":
        try:
            data = tomllib.loads(Path(path).read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise CloudVMIError(f"cannot read policy {path}: {exc}") from exc
        return cls.parse(data)

    @classmethod
    def parse(cls, data: dict) -> "Policy":
        rules = []
        for i, raw in enumerate(data.get("rule", [])):
            name = str(raw.get("name") or f"rule-{i + 1}")
            action = raw.get("action", "report")
            match = dict(raw.get("match") or {})
            if action not in ACTIONS:
                raise CloudVMIError(f"rule {name}: action must be one of {', '.join(ACTIONS)}")
            unknown = set(match) - set(MATCH_KEYS)
            if unknown or not match:
                raise CloudVMIError(f"rule {name}: match needs some of {', '.join(MATCH_KEYS)}"
                                    + (f" (unknown: {', '.join(sorted(unknown))})"
                                       if unknown else ""))
            rule = Rule(name, action, match)
            try:
                if "cmdline" in match:
                    rule.cmdline_re = re.compile(match["cmdline"])
                rule.networks = [ipaddress.ip_network(n, strict=False)
                                 for n in _listed(match.get("remote", []))]
            except (re.error, ValueError) as exc:
                raise CloudVMIError(f"rule {name}: {exc}") from exc
            rules.append(rule)
        if not rules:
            raise CloudVMIError("the policy has no [[rule]]")
        return cls(rules)


def _ip(text: str):
    """An address, IPv4-mapped IPv6 ones as the IPv4 address they carry."""
    a = ipaddress.ip_address(text)
    return a.ipv4_mapped or a if a.version == 6 else a


def _listed(value) -> list:
    return value if isinstance(value, list) else [value]


@dataclass
class Facts:
    """What one check knows of one VM: its processes, by pid, and their sockets."""

    processes: dict[int, Any]
    listening: dict[int, set[int]]  # pid -> ports it listens on
    peers: dict[int, set]  # pid -> remote addresses it is connected to


class Guard:
    def __init__(self, policy: Policy, events: Events | None = None,
                 metrics: Metrics | None = None) -> None:
        self.policy = policy
        self.events = events or Events()
        self.metrics = metrics
        self._hashes: dict[tuple, str | None] = {}  # (vm, exe, size, mtime) -> sha256
        self._handled: set[tuple] = set()  # (vm, pid, start, rule) acted on already

    # -- one VM ---------------------------------------------------------------------------
    def check(self, target: Target, vm) -> list[Event]:
        """Match every rule against VM's processes and act; the events of this check."""
        start = time.monotonic()
        out: list[Event] = []
        try:
            for rule, p in self.matching(target, vm):
                event = self._act(rule, p, vm, target)
                if event is not None:
                    out.append(event)
        except CloudVMIError as exc:
            out.append(self._emit(target, "error", "", {"error": str(exc)}))
            if self.metrics:
                self.metrics.errors.labels(target.name).inc()
        if self.metrics:
            self.metrics.checks.labels(target.name).inc()
            self.metrics.latency.labels(target.name).observe(time.monotonic() - start)
        return out

    def matching(self, target: Target, vm) -> list[tuple[Rule, Any]]:
        """(rule, process) for every process each rule matches; nothing is done to them."""
        facts = self._facts(vm)
        return [(rule, p) for rule in self.policy.rules for p in facts.processes.values()
                if self._matches(rule, p, facts, vm, target)]

    def _facts(self, vm) -> Facts:
        procs = {p.pid: p for p in vm.linux.processes().items if not p.kernel_thread}
        listening: dict[int, set[int]] = {}
        peers: dict[int, set] = {}
        if any(r.needs_sockets for r in self.policy.rules):
            for s in vm.linux.sockets().items:
                if s.family not in ("ipv4", "ipv6"):
                    continue
                for pid in s.pids:
                    if s.state == "LISTEN" or (s.type == "dgram" and not s.remote_port):
                        listening.setdefault(pid, set()).add(s.local_port)
                    elif s.remote_port:
                        peers.setdefault(pid, set()).add(_ip(s.remote_address))
        return Facts(procs, listening, peers)

    def _matches(self, rule: Rule, p, facts: Facts, vm, target: Target) -> bool:
        m = rule.match
        if "name" in m and not fnmatch.fnmatchcase(p.comm, m["name"]):
            return False
        if "exe" in m and not (p.exe and fnmatch.fnmatchcase(p.exe, m["exe"])):
            return False
        if "uid" in m and p.uid not in _listed(m["uid"]):
            return False
        if rule.cmdline_re and not rule.cmdline_re.search(" ".join(p.cmdline)):
            return False
        if "parent" in m:
            parent = facts.processes.get(p.ppid)
            if parent is None or not fnmatch.fnmatchcase(parent.comm, m["parent"]):
                return False
        if "listen_port" in m and not facts.listening.get(p.pid, set()) & set(
                _listed(m["listen_port"])):
            return False
        if rule.networks and not any(a in n for a in facts.peers.get(p.pid, ())
                                     for n in rule.networks):
            return False
        if "sha256" in m:
            digest = self._sha256(vm, target, p.exe)
            if digest is None or digest not in [h.lower() for h in _listed(m["sha256"])]:
                return False
        return True

    def _sha256(self, vm, target: Target, exe: str | None) -> str | None:
        """The executable's hash, read from the guest; cached while its size and mtime hold."""
        if not exe:
            return None
        try:
            st = vm.guest.stat(exe, follow=True)
            key = (target.name, exe, st.size, st.mtime)
            if key not in self._hashes:
                self._hashes[key] = hashlib.sha256(vm.guest.read_file(exe, MAX_EXE)).hexdigest()
            return self._hashes[key]
        except (CloudVMIError, ValueError):  # ValueError: a path that is not absolute
            return None

    # -- actions --------------------------------------------------------------------------
    def _act(self, rule: Rule, p, vm, target: Target) -> Event | None:
        key = (target.name, p.pid, p.start_time, rule.name)
        if key in self._handled and rule.action in ("report", "stop", "quarantine"):
            return None  # told once; a stopped process stays stopped
        detail = {"pid": p.pid, "comm": p.comm, "exe": p.exe, "uid": p.uid,
                  "cmdline": p.cmdline, "action": rule.action}
        try:
            if rule.action in ("kill", "quarantine"):
                vm.guest.kill(p.pid, SIGKILL)
            elif rule.action == "stop":
                vm.guest.kill(p.pid, SIGSTOP)
            if rule.action == "quarantine" and p.exe:
                st = vm.guest.stat(p.exe, follow=True)
                vm.guest.chmod(p.exe, st.mode & 0o7777 & ~0o111)
                detail["quarantined"] = p.exe
        except (CloudVMIError, ValueError) as exc:  # ValueError: an exe path not absolute
            detail["error"] = str(exc)
            if self.metrics:
                self.metrics.errors.labels(target.name).inc()
            return self._emit(target, "error", rule.name, detail)
        self._handled.add(key)
        if self.metrics:
            self.metrics.findings.labels(target.name, rule.name).inc()
            if rule.action != "report":
                self.metrics.actions.labels(target.name, rule.action).inc()
        return self._emit(target, "finding" if rule.action == "report" else "action",
                          rule.name, detail)

    def _emit(self, target: Target, kind: str, rule: str, detail: dict) -> Event:
        return self.events.emit(Event("guard", target.name, kind, rule, detail, target.node))

    # -- many VMs -------------------------------------------------------------------------
    def once(self, targets: list[Target], progress=None) -> list[Event]:
        """Check each target once; PROGRESS(done, total), if given, after each."""
        out = []
        if self.metrics:
            self.metrics.vms.set(len(targets))
        for done, (target, vm) in enumerate(each(targets), start=1):
            out += self.check(target, vm)
            if progress is not None:
                progress(done, len(targets))
        return out

    def watch(self, targets: list[Target], interval: float, rounds: int | None = None,
              stop=None) -> None:
        """Check every interval until ROUNDS are done or STOP (an Event) is set. Each VM is
        kept open between rounds (attaching again each time would cost more than a check)."""
        if self.metrics:
            self.metrics.vms.set(len(targets))
        with contextlib.ExitStack() as stack:
            vms = [(t, stack.enter_context(t.open())) for t in targets]
            done = 0
            while rounds is None or done < rounds:
                began = time.monotonic()
                for target, vm in vms:
                    self.check(target, vm)
                done += 1
                wait = max(0.0, interval - (time.monotonic() - began))
                if stop is not None:
                    if stop.wait(wait):
                        return
                elif rounds is None or done < rounds:
                    time.sleep(wait)
