"""The injection journal names the run of the VM it belongs to: a journal of another run (a
restarted QEMU, a rebooted guest) is set aside, never applied to this one."""

import json

import pytest

from cloudvmi.write.journal import Holding, Journal, StaleJournal
from cloudvmi.write.target import Target

RUN = {"qemu_pid": 4242, "qemu_started": "123456", "host_boot": "b0", "guest_text": 1 << 63,
       "guest_build": "abc"}


def _target() -> Target:
    return Target(thread="p1.1", task=0xFFFF888000001000, pid=7, tgid=7, root=0x1000,
                  pgd=0xFFFF888000002000, saved={"rip": 0x401000, "rsp": 0x7FFF0000})


def test_same_run_reads_back(tmp_path):
    journal = Journal(tmp_path / "vm.json", RUN)
    journal.write(_target())
    assert journal.read() == _target()
    journal.hold([0x1234])
    assert journal.read() == Holding([0x1234])
    assert json.loads(journal.path.read_text())["run"] == RUN
    assert oct(journal.path.stat().st_mode & 0o777) == "0o600"


@pytest.mark.parametrize("key", sorted(RUN))
def test_another_run_is_stale_and_set_aside(tmp_path, key):
    Journal(tmp_path / "vm.json", RUN).write(_target())
    now = Journal(tmp_path / "vm.json", {**RUN, key: "other"})
    with pytest.raises(StaleJournal, match="another run"):
        now.read()
    aside = now.set_aside()
    assert not now.exists() and aside.exists() and now.read() is None


def test_recovery_does_not_touch_the_guest_for_a_stale_journal(tmp_path):
    """Injector.recover() with another run's journal: set aside, the VM left alone."""
    from cloudvmi.write.injector import Injector

    Journal(tmp_path / "vm.json", RUN).write(_target())

    class Untouchable:
        def __getattr__(self, name):
            raise AssertionError(f"the guest was touched: gdb.{name}")

    injector = Injector.__new__(Injector)  # only what recover() reads
    injector.journal = Journal(tmp_path / "vm.json", {**RUN, "qemu_pid": 1})
    injector.gdb = Untouchable()
    message = injector.recover()
    assert "another run" in message and "not applied" in message
    assert not (tmp_path / "vm.json").exists()
