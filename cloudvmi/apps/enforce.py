"""`cloudvmi enforce`: a desired state, compared with the guest and applied from outside.

Each item is read and changed with the ordinary tool for it, run through `exec`. Accounts
are locked with shadow's `usermod -L`, so /etc/shadow reads as the guest's own tools would
have written it. Kernel settings go through procps' `sysctl`, interfaces through iproute2's
`ip` (the guest's netlink), and file modes and owners through `chmod`/`chown`. File
contents are written by the `write_file` guest operation with `nofollow` (a symbolic link
planted in the file's place makes the write fail instead of redirecting it), and keys only
into a `~/.ssh` that is a directory, not a link. Forbidden processes
are found in the guest's memory and killed by a guest operation. Reading comes first:
`--dry-run` prints the plan, and a run on a guest already in the desired state changes
nothing.

State file (TOML):

    [accounts.bob]
    locked = true                     # or: absent = true
    authorized_keys = { present = ["ssh-ed25519 AAAA... ops"], absent = ["ssh-rsa BBBB..."] }

    [sysctl]
    "net.ipv4.ip_forward" = 0

    [interfaces.eth1]
    state = "up"                      # or "down"
    addresses = ["10.0.0.5/24"]       # present (others are left alone)

    [files."/etc/motd"]
    content = "Authorized use only\\n"
    mode = "0644"
    owner = "0:0"

    [[processes.forbidden]]
    name = "telnetd"                  # guard's match keys (name, exe, cmdline, uid, ...)
"""

import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cloudvmi.apps.guard import Guard, Policy
from cloudvmi.apps.targets import Target
from cloudvmi.errors import CloudVMIError

TIMEOUT = 120.0


@dataclass
class Change:
    item: str  # "account bob", "sysctl vm.swappiness", ...
    what: str  # the change, in words
    before: Any = None
    after: Any = None
    apply: Callable[[], None] | None = field(default=None, repr=False, compare=False)


def load(path: str | Path) -> dict:
    try:
        return tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise CloudVMIError(f"cannot read state {path}: {exc}") from exc


class Guest:
    """The guest as the tools see it, through exec."""

    def __init__(self, vm) -> None:
        self.vm = vm

    def run(self, argv: list[str], stdin: bytes = b"", ok: tuple[int, ...] = (0,)) -> str:
        r = self.vm.exec(argv, stdin=stdin, timeout=TIMEOUT)
        if r.status not in ok:
            raise CloudVMIError(f"{' '.join(argv)} in the guest failed ({r.status}): "
                                f"{r.stderr.decode(errors='replace').strip()[-300:]}")
        return r.stdout.decode("utf-8", "surrogateescape")

    def read(self, path: str) -> str | None:
        r = self.vm.exec(["cat", "--", path], timeout=TIMEOUT)
        return r.stdout.decode("utf-8", "surrogateescape") if r.status == 0 else None

    def write(self, path: str, content: bytes) -> None:
        """Replace a file's content by a guest operation that will not write through a
        symbolic link (a shell's `>` would: a guest user's link must not aim our write)."""
        self.vm.guest.write_file(path, content, nofollow=True)

    def real_directory(self, path: str) -> None:
        """Refuse to write under PATH unless it is a directory itself, not a link to one."""
        if self.vm.guest.stat(path).type != "dir":
            raise CloudVMIError(f"{path} in the guest is not a directory (a symbolic link?): "
                                "not writing through it")


def plan(vm, state: dict) -> list[Change]:
    """What would change to bring VM to STATE (each Change can apply itself)."""
    g = Guest(vm)
    changes: list[Change] = []
    changes += _accounts(g, state.get("accounts", {}))
    changes += _sysctls(g, state.get("sysctl", {}))
    changes += _interfaces(g, state.get("interfaces", {}))
    changes += _files(g, state.get("files", {}))
    changes += _processes(vm, state.get("processes", {}))
    return changes


def apply(changes: list[Change], on_change: Callable[[Change], None] | None = None) -> None:
    for c in changes:
        if on_change is not None:
            on_change(c)  # recorded before the guest is touched
        c.apply()


# -- accounts ----------------------------------------------------------------------------
def _table(text: str | None) -> dict[str, list[str]]:
    return {line.split(":", 1)[0]: line.split(":") for line in (text or "").splitlines()
            if ":" in line}


def _accounts(g: Guest, wanted: dict) -> list[Change]:
    if not wanted:
        return []
    passwd, shadow = _table(g.read("/etc/passwd")), _table(g.read("/etc/shadow"))
    out = []
    for name, want in wanted.items():
        exists = name in passwd
        if want.get("absent"):
            if exists:
                out.append(Change(f"account {name}", "remove", "present", "absent",
                                  lambda n=name: g.run(["userdel", n])))
            continue
        if not exists:
            raise CloudVMIError(f"account {name} does not exist in the guest (enforce "
                                "locks, removes and keys accounts; it does not create them)")
        hashed = (shadow.get(name) or passwd[name])[1]
        locked = hashed.startswith("!")
        if "locked" in want and bool(want["locked"]) != locked:
            flag = "-L" if want["locked"] else "-U"
            out.append(Change(f"account {name}", "lock" if want["locked"] else "unlock",
                              locked, bool(want["locked"]),
                              lambda n=name, f=flag: g.run(["usermod", f, n])))
        keys = want.get("authorized_keys")
        if keys:
            out += _keys(g, name, passwd[name], keys)
    return out


def _keys(g: Guest, name: str, entry: list[str], keys: dict) -> list[Change]:
    home, uid, gid = entry[5] if len(entry) > 5 else "/", entry[2], entry[3]
    path = f"{home.rstrip('/')}/.ssh/authorized_keys"
    current = (g.read(path) or "").splitlines()
    present, absent = list(keys.get("present", [])), set(keys.get("absent", []))
    lines = [k for k in current if k.strip() not in absent]
    lines += [k for k in present if k not in lines]
    if lines == current:
        return []

    def write() -> None:
        ssh = f"{home.rstrip('/')}/.ssh"
        g.run(["mkdir", "-p", "-m", "700", ssh])
        g.real_directory(ssh)  # the user owns it: ~/.ssh -> /root/.ssh must not work
        g.write(path, ("\n".join(lines) + "\n").encode())
        g.run(["chown", "-h", f"{uid}:{gid}", ssh, path])
        g.run(["chmod", "600", path])

    added = [k for k in lines if k not in current]
    removed = [k for k in current if k not in lines]
    return [Change(f"account {name} authorized_keys", f"add {len(added)}, remove "
                   f"{len(removed)} keys", removed, added, write)]


# -- sysctl ------------------------------------------------------------------------------
def _sysctls(g: Guest, wanted: dict) -> list[Change]:
    out = []
    for key, value in wanted.items():
        path = "/proc/sys/" + key.replace(".", "/")
        now = g.read(path)
        if now is None:
            raise CloudVMIError(f"sysctl {key}: no {path} in the guest")
        want = str(value)
        if now.split() != want.split():
            out.append(Change(f"sysctl {key}", f"set to {want}", now.strip(), want,
                              lambda k=key, v=want: g.run(["sysctl", "-w", f"{k}={v}"])))
    return out


# -- interfaces --------------------------------------------------------------------------
def _interfaces(g: Guest, wanted: dict) -> list[Change]:
    out = []
    for name, want in wanted.items():
        link = g.run(["ip", "-o", "link", "show", "dev", name])
        up = bool(re.search(r"<[^>]*\bUP\b", link))
        state = want.get("state")
        if state not in (None, "up", "down"):
            raise CloudVMIError(f"interface {name}: state must be up or down")
        if state and (state == "up") != up:
            out.append(Change(f"interface {name}", f"set {state}", "up" if up else "down",
                              state, lambda n=name, s=state: g.run(
                                  ["ip", "link", "set", "dev", n, s])))
        have = set(re.findall(r"inet6? (\S+)", g.run(["ip", "-o", "addr", "show", "dev", name])))
        for address in want.get("addresses", []):
            if address not in have:
                out.append(Change(f"interface {name}", f"add address {address}", None,
                                  address, lambda n=name, a=address: g.run(
                                      ["ip", "addr", "add", a, "dev", n])))
    return out


# -- files -------------------------------------------------------------------------------
def _files(g: Guest, wanted: dict) -> list[Change]:
    out = []
    for path, want in wanted.items():
        r = g.vm.exec(["stat", "-c", "%a %u %g", "--", path], timeout=TIMEOUT)
        exists = r.status == 0
        mode, uid, gid = r.stdout.decode().split() if exists else (None, None, None)
        if "content" in want:
            content = want["content"].encode()
            if not exists or g.read(path) != want["content"]:
                out.append(Change(f"file {path}", "write content",
                                  None if not exists else "different", len(content),
                                  lambda p=path, c=content: g.write(p, c)))
        if "mode" in want and (not exists or int(mode, 8) != int(str(want["mode"]), 8)):
            m = f"{int(str(want['mode']), 8):o}"
            out.append(Change(f"file {path}", f"mode {m}", mode, m,
                              lambda p=path, m=m: g.run(["chmod", m, "--", p])))
        if "owner" in want and (not exists or f"{uid}:{gid}" != want["owner"]):
            out.append(Change(f"file {path}", f"owner {want['owner']}",
                              f"{uid}:{gid}" if exists else None, want["owner"],
                              lambda p=path, o=want["owner"]: g.run(["chown", o, "--", p])))
    return out


# -- processes ---------------------------------------------------------------------------
def _processes(vm, wanted: dict) -> list[Change]:
    """Forbidden processes: matched as guard's rules are (name, exe, cmdline, uid, parent,
    sha256), in the guest's memory."""
    forbidden = wanted.get("forbidden", [])
    if not forbidden:
        return []
    policy = Policy.parse({"rule": [{"name": f"forbidden {i + 1}", "action": "kill",
                                     "match": m} for i, m in enumerate(forbidden)]})
    seen: set[int] = set()
    out = []
    for _, p in Guard(policy).matching(Target("", ""), vm):
        if p.pid not in seen:
            seen.add(p.pid)
            out.append(Change(f"process {p.pid} {p.comm}", "kill", "running", "gone",
                              lambda pid=p.pid: vm.guest.kill(pid, 9)))
    return out
