"""The wire codec and the capability registry, without a guest: values round trip as the
very types the local API returns, payloads are announced before they are read, and calls are
checked against their declarations."""

from dataclasses import dataclass

import pytest

from cloudvmi import capability
from cloudvmi.os.linux.views.common import ViewResult
from cloudvmi.os.linux.views.processes import Process
from cloudvmi.remote import codec
from cloudvmi.vm import KernelProfile


def _process(pid: int, **kw) -> Process:
    return Process(pid=pid, ppid=1, uid=0, gid=0, euid=0, comm="odd (name) ü\x1b[31m",
                   state="S", start_time=1.5, kernel_thread=False, cmdline=["a", "", "b"],
                   exe=None, threads=1, address=1 << 63, **kw)


def _round_trip(value, hint):
    text, blobs = codec.encode(value)
    return codec.decode(text, b"".join(blobs), hint)


def test_nested_generic_dataclasses_round_trip():
    result = ViewResult(items=[_process(1), _process(2, errors=["cred: bad"])],
                        partial="task list: loops")
    back = _round_trip(result, ViewResult[Process])
    assert back == result and isinstance(back.items[0], Process)


def test_bytes_travel_after_the_json_announced_by_length():
    profile = KernelProfile(profile={"names": ["_text"]}, btf=bytes(range(256)) * 40,
                            text_phys=0x1000000, text_virt=0xFFFFFFFF81000000, levels=5,
                            arch="x86_64", regions=[[0, 1 << 28]])
    text, blobs = codec.encode((7, b"output", profile))
    assert b"output" not in text.encode() and codec.blob_sizes(text) == [6, 10240]
    assert codec.decode(text, b"".join(blobs), tuple[int, bytes, KernelProfile]) == (
        7, b"output", profile)
    with pytest.raises(ValueError, match="shorter"):
        codec.decode(text, b"".join(blobs)[:-1], tuple[int, bytes, KernelProfile])


def test_arguments_are_checked_against_the_declaration():
    cap = capability.get("guest", "write_file")
    args = codec.check_args(cap, {"path": "/tmp/x", "data": b"abc", "mode": 420})
    assert args == {"path": "/tmp/x", "data": b"abc", "mode": 420}
    with pytest.raises(TypeError, match="no argument"):
        codec.check_args(cap, {"path": "/tmp/x", "data": b"", "colour": 1})
    with pytest.raises(TypeError, match="needs data"):
        codec.check_args(cap, {"path": "/tmp/x"})
    with pytest.raises(TypeError, match="must be int"):
        codec.check_args(cap, {"path": "/tmp/x", "data": b"", "mode": "644"})
    with pytest.raises(TypeError, match="must be an integer"):
        codec.check_args(cap, {"path": "/tmp/x", "data": b"", "mode": True})
    run = capability.get("guest", "run")
    assert codec.check_args(run, {"argv": ["/bin/true"], "timeout": 3}) == {
        "argv": ["/bin/true"], "timeout": 3.0}
    with pytest.raises(TypeError):
        codec.check_args(run, {"argv": "/bin/true"})


def test_every_capability_is_declared_once_with_a_permission_and_types():
    caps = capability.all_capabilities()
    assert len({c.key for c in caps}) == len(caps)
    assert {c.facet for c in caps} == {"linux", "guest", "vm"}
    for c in caps:
        assert c.permission in capability.PERMISSIONS and c.doc, c.key
        assert all(p.type is not None for p in c.params), c.key
    assert capability.get("vm", "write_physical").permission == "write"
    assert capability.get("linux", "processes").command == "ps"


def test_a_second_declaration_of_a_name_is_refused():
    def processes(kernel) -> list:
        """Another module's processes."""
        return []

    with pytest.raises(ValueError, match="declared twice"):
        capability.view()(processes)


@dataclass
class _Point:
    x: int
    label: str | None = None


def test_optional_fields_and_lists_of_dataclasses():
    points = [_Point(1), _Point(2, "two")]
    assert _round_trip(points, list[_Point]) == points
