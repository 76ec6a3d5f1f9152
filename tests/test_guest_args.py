"""Guest-operation arguments checked where they are declared, without a guest: relative
paths and unbounded timeouts are refused before anything touches the VM (locally, by the
remote client and by the agent's argument check), and write_file's `nofollow` reaches the
guest's openat as O_NOFOLLOW."""

import math
from contextlib import contextmanager
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

from cloudvmi import capability
from cloudvmi.apps import enforce
from cloudvmi.arch.x86_64 import abi as x86
from cloudvmi.cli import ops as ops_cli
from cloudvmi.errors import CloudVMIError
from cloudvmi.remote import codec
from cloudvmi.remote.client import RemoteGuestOps, RemoteVM
from cloudvmi.write import batch as batch_mod
from cloudvmi.write.errors import GuestOSError
from cloudvmi.write.operations import GuestOps
from cloudvmi.write.recipes.common import absolute_path, guest_path
from cloudvmi.write.recipes.run import TIMEOUT


class Untouchable:
    """Stands for the injector, the agent connection or the VM: any use fails the test."""

    def __getattr__(self, name: str):
        pytest.fail(f"the VM was touched ({name}) before the arguments were refused")


# -- relative paths ---------------------------------------------------------------------------
@pytest.mark.parametrize("path", ["etc/passwd", "./x", "../etc/shadow", "", "~/x", " /etc",
                                  None, b"/etc/passwd", "/etc/\0x"])
def test_the_check_refuses(path) -> None:
    with pytest.raises(ValueError):
        absolute_path(path)


def test_the_check_accepts_absolute_paths() -> None:
    for path in ("/", "/etc/passwd", "/tmp/../etc/x", "/a b"):
        absolute_path(path)
    assert guest_path("/etc") == b"/etc\0"
    with pytest.raises(ValueError, match="absolute"):
        guest_path("etc")  # where the bytes are made, too


def test_every_path_parameter_declares_it() -> None:
    paths = [(c.name, p) for c in capability.all_capabilities("guest") for p in c.params
             if p.name == "path"]
    assert {name for name, _ in paths} >= {"read_file", "write_file", "listdir", "stat",
                                           "mkdir", "chmod", "chown", "remove"}
    for name, p in paths:
        assert p.checks, f"{name}: path is not checked"
        assert p.type is str  # the wire type is unchanged


CALLS = [("read_file", ("etc/passwd",)), ("write_file", ("motd", b"x")),
         ("listdir", (".",)), ("stat", ("etc",)), ("mkdir", ("new",)),
         ("chmod", ("x", 0o600)), ("chown", ("x", 0, 0)), ("remove", ("tmp/x",)),
         ("run", (["sh", "-c", "id"],)), ("run", ([],))]


@pytest.mark.parametrize("name,args", CALLS)
def test_refused_before_the_guest_is_touched(name: str, args: tuple) -> None:
    local = GuestOps(Untouchable())  # its session() would hijack through the injector
    with pytest.raises(ValueError, match="absolute|nothing to run"):
        getattr(local, name)(*args)
    remote = RemoteGuestOps(Untouchable())  # would send the call to the agent
    with pytest.raises(ValueError, match="absolute|nothing to run"):
        getattr(remote, name)(*args)


@pytest.mark.parametrize("name,args", CALLS)
def test_the_agent_refuses_them_too(name: str, args: tuple) -> None:
    cap = capability.get("guest", name)
    named = dict(zip((p.name for p in cap.params), args, strict=False))
    with pytest.raises(ValueError, match=f"{name}: (path|argv)"):
        codec.check_args(cap, named)


# -- bounded timeouts ---------------------------------------------------------------------------
@pytest.mark.parametrize("timeout", [0, -1, 0.0009, 3600.5, 1e9, math.inf, math.nan])
def test_run_timeout_is_bounded(timeout: float) -> None:
    with pytest.raises(ValueError, match="timeout"):
        GuestOps(Untouchable()).run(["/bin/true"], timeout)
    with pytest.raises(ValueError, match="timeout"):
        codec.check_args(capability.get("guest", "run"),
                         {"argv": ["/bin/true"], "timeout": timeout})
    with pytest.raises(ValueError, match="exec: timeout"):
        RemoteVM(Untouchable(), "web-1").exec(["ls"], timeout=timeout)


def test_exec_cwd_must_be_absolute() -> None:
    with pytest.raises(ValueError, match="exec: cwd"):
        RemoteVM(Untouchable(), "web-1").exec(["ls"], cwd="tmp")


def test_timeouts_within_bounds_pass() -> None:
    run = capability.get("guest", "run")
    for timeout in (TIMEOUT.low, 1, 30.0, TIMEOUT.high):
        assert codec.check_args(run, {"argv": ["/bin/true"], "timeout": timeout})[
            "timeout"] == timeout


def test_cli_bounds_before_attaching(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ops_cli, "open_vm", Untouchable())
    result = CliRunner().invoke(ops_cli.run, ["web-1", "--timeout", "0", "--", "/bin/true"])
    assert result.exit_code == 2 and "timeout" in result.output
    from cloudvmi.cli.exec_cmd import exec_command

    monkeypatch.setattr("cloudvmi.cli.exec_cmd.open_vm", Untouchable())
    result = CliRunner().invoke(exec_command, ["web-1", "--timeout", "7200", "--", "ls"])
    assert result.exit_code == 2 and "timeout" in result.output


# -- write_file's nofollow -----------------------------------------------------------------------
class FakeSession:
    """The calls a recipe lays out, answered as the guest would (no guest)."""

    def __init__(self, answers) -> None:
        self.abi = x86.ABI
        self.answers = answers  # (call name, arguments) -> raw result
        self.calls: list[tuple[str, tuple]] = []
        self._next = 0x10000

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass

    def batch(self):
        return batch_mod.Batch(0x1000)

    def put(self, payload: bytes) -> int:
        self._next += 0x1000
        return self._next

    def run(self, b):
        names = {nr: name for name, nr in self.abi.numbers.items()}
        out = []
        for call in b.calls:
            self.calls.append((names[call.nr], call.args))
            out.append(self.answers(names[call.nr], call.args) & (1 << 64) - 1)
        return out


class RecordingOps(GuestOps):
    def __init__(self, answers) -> None:
        super().__init__(Untouchable())
        self.fake = FakeSession(answers)

    def session(self, data_size: int = 0):
        return self.fake


def opened(ops: RecordingOps) -> int:
    (flags,) = [args[2] for name, args in ops.fake.calls if name == "openat"]
    return flags


def test_nofollow_opens_with_o_nofollow_and_a_link_fails_with_eloop() -> None:
    assert x86.O_NOFOLLOW == 0o400000
    link = RecordingOps(lambda name, args: -40 if name == "openat" else 0)  # a symlink
    with pytest.raises(GuestOSError) as info:
        link.write_file("/etc/motd", b"hello", nofollow=True)
    assert info.value.errno == 40 and "ELOOP" in str(info.value)
    assert opened(link) & x86.O_NOFOLLOW
    assert [name for name, _ in link.fake.calls] == ["openat"]  # nothing written


def test_without_nofollow_the_flags_are_as_before() -> None:
    def guest(name: str, args: tuple) -> int:
        return {"openat": 3, "write": args[2] if len(args) > 2 else 0}.get(name, 0)

    plain = RecordingOps(guest)
    plain.write_file("/etc/motd", b"hello")
    assert opened(plain) == x86.O_WRONLY | x86.O_CREAT | x86.O_CLOEXEC | x86.O_TRUNC
    assert [n for n, _ in plain.fake.calls] == ["openat", "write", "close"]


def test_nofollow_travels_to_the_agent() -> None:
    cap = capability.get("guest", "write_file")
    assert cap.param("nofollow").type is bool and cap.param("nofollow").default is False
    args = {"path": "/etc/motd", "data": b"x", "nofollow": True}
    text, blobs = codec.encode(args)
    assert codec.check_args(cap, codec.decode(text, b"".join(blobs))) == args
    with pytest.raises(TypeError, match="nofollow"):
        codec.check_args(cap, {"path": "/x", "data": b"", "nofollow": "yes"})


def test_put_no_follow(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    seen = []

    @contextmanager
    def open_vm(target: str, writable: bool = False):
        yield SimpleNamespace(guest=SimpleNamespace(
            write_file=lambda path, data, **kw: seen.append(((path, data.readall()), kw))))

    monkeypatch.setattr(ops_cli, "open_vm", open_vm)
    local = tmp_path / "motd"
    local.write_bytes(b"hi\n")
    result = CliRunner().invoke(ops_cli.put, ["web-1", str(local), "/etc/motd", "--no-follow"])
    assert result.exit_code == 0, result.output
    assert seen == [(("/etc/motd", b"hi\n"), {"append": False, "mode": 0o644,
                                              "nofollow": True})]


# -- enforce writes without following links ---------------------------------------------------
class FakeVM:
    def __init__(self, ssh_type: str = "dir") -> None:
        self.writes: list[tuple] = []
        self.ran: list[list[str]] = []
        self.guest = SimpleNamespace(
            write_file=lambda *a, **kw: self.writes.append((a, kw)),
            stat=lambda path: SimpleNamespace(type=ssh_type))

    def exec(self, argv, stdin=b"", timeout=60.0, **kw):
        self.ran.append(argv)
        return SimpleNamespace(status=0, stdout=b"", stderr=b"")


def test_enforce_writes_contents_with_nofollow() -> None:
    vm = FakeVM()
    enforce.Guest(vm).write("/etc/motd", b"Authorized use only\n")
    assert vm.writes == [(("/etc/motd", b"Authorized use only\n"), {"nofollow": True})]
    assert not vm.ran  # not through a shell's `>`, which follows links


def test_enforce_keys_refuse_a_linked_ssh_directory() -> None:
    entry = ["bob", "x", "1000", "1000", "", "/home/bob", "/bin/sh"]
    vm = FakeVM(ssh_type="symlink")  # ~/.ssh -> /root/.ssh
    (change,) = enforce._keys(enforce.Guest(vm), "bob", entry, {"present": ["ssh-ed25519 A"]})
    with pytest.raises(CloudVMIError, match="not a directory"):
        change.apply()
    assert not vm.writes
    vm = FakeVM()
    (change,) = enforce._keys(enforce.Guest(vm), "bob", entry, {"present": ["ssh-ed25519 A"]})
    change.apply()
    assert vm.writes == [(("/home/bob/.ssh/authorized_keys", b"ssh-ed25519 A\n"),
                          {"nofollow": True})]
    assert ["chown", "-h", "1000:1000", "/home/bob/.ssh", "/home/bob/.ssh/authorized_keys"] \
        in vm.ran
