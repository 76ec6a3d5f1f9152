"""The agent's registry keys VM locks and attached VMs by the real path of the QMP socket:
two names for one socket (symlinks) are one VM with one lock, and names that resolve to
nothing leave no lock behind. Real sockets and symlinks in a directory; only attach() (which
would talk QMP to a QEMU) is replaced."""

import os
import socket
import threading
from pathlib import Path

import pytest

from cloudvmi.remote import registry as registry_mod
from cloudvmi.remote.registry import Registry, UnknownVM


class FakeVM:
    def __init__(self, target: str) -> None:
        self.target, self.name, self.closed = target, "", False

    def recover_pending(self) -> bool:
        return False

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def vms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A QMP directory with a-qmp and b-qmp both links to one listening socket."""
    real = tmp_path / "sock"
    real.mkdir()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(real / "vm1.qmp"))
    qmp_dir = tmp_path / "vms"
    qmp_dir.mkdir()
    (qmp_dir / "a.qmp").symlink_to(real / "vm1.qmp")
    (qmp_dir / "b.qmp").symlink_to(real / "vm1.qmp")
    attached: list[FakeVM] = []

    def attach(target: str, writable: bool = False, finders=None) -> FakeVM:
        attached.append(FakeVM(target))
        return attached[-1]

    monkeypatch.setattr(registry_mod, "attach", attach)
    try:
        yield Registry([], [qmp_dir]), real / "vm1.qmp", attached, qmp_dir
    finally:
        listener.close()


def test_two_names_one_key(vms) -> None:
    reg, real, _, _ = vms
    assert reg.resolve("a").key == reg.resolve("b").key == os.path.realpath(real)
    assert registry_mod.socket_key(real) == os.path.realpath(real)


def test_two_names_one_lock(vms) -> None:
    reg, _, _, _ = vms
    entered = threading.Event()

    def other() -> None:
        with reg.lock("b"):
            entered.set()

    with reg.lock("a"):
        thread = threading.Thread(target=other)
        thread.start()
        assert not entered.wait(0.3)  # "b" waits for "a": the same VM
        assert reg.locks() == 1
    thread.join(5)
    assert entered.is_set()
    assert reg.locks() == 0  # nothing attached, nobody holding: not kept


def test_two_names_one_attached_vm(vms) -> None:
    reg, _, attached, _ = vms
    with reg.lock("a"):
        first = reg.vm("a")
    with reg.lock("b"):
        assert reg.vm("b") is first
    assert len(attached) == 1 and reg.attached() == 1 and reg.locks() == 1
    with reg.lock("b"):
        reg.drop("b")  # dropped under either name
    assert first.closed and reg.attached() == 0 and reg.locks() == 0


def test_unknown_names_leave_no_lock(vms) -> None:
    reg, _, _, qmp_dir = vms
    for i in range(200):
        with pytest.raises(UnknownVM):
            reg.lock(f"nothing-{i}")
    (qmp_dir / "dangling.qmp").symlink_to(qmp_dir / "gone.sock")
    (qmp_dir / "file.qmp").write_text("not a socket")
    for name in ("dangling", "file"):
        with pytest.raises(UnknownVM):
            reg.lock(name)
    assert reg.locks() == 0


def test_a_link_pointed_elsewhere_is_another_vm(vms, tmp_path: Path) -> None:
    reg, real, attached, qmp_dir = vms
    with reg.lock("a"):
        reg.vm("a")
    other = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    other.bind(str(tmp_path / "sock" / "vm2.qmp"))
    try:
        (qmp_dir / "a.qmp").unlink()
        (qmp_dir / "a.qmp").symlink_to(tmp_path / "sock" / "vm2.qmp")
        assert reg.resolve("a").key == os.path.realpath(tmp_path / "sock" / "vm2.qmp")
        with reg.lock("a"):
            assert reg.vm("a") is attached[-1] and len(attached) == 2
        assert reg.locks() == 2  # one per attached VM
        reg.close()
        assert all(v.closed for v in attached) and reg.locks() == 0
    finally:
        other.close()


def test_a_vanished_socket_is_dropped(vms) -> None:
    reg, real, attached, qmp_dir = vms
    with reg.lock("a"):
        reg.vm("a")
    real.unlink()  # the VM went away
    with pytest.raises(UnknownVM):
        reg.lock("a")
    reg.drop("a")  # the agent drops it by name after a broken connection
    assert attached[0].closed and reg.attached() == 0 and reg.locks() == 0
