"""Uploads are streamed to the guest, never held whole: a ByteStream is read a window at a
time by write_file, locally (the CLI reads a local file as it goes) and in the agent (the
network is read as the guest is written). The unit tests pin the stream's contract; the live
tests write 128 MiB through a real agent process into a real guest and check the agent's peak
memory, the guest's own sha256sum of the file and the audit record, then cut an upload off
part way and check the guest is left running, unhijacked, with what was written."""

import hashlib
import io
import json
import os
import threading
import time
import uuid
from pathlib import Path

import grpc
import pytest

from cloudvmi.lab import guest as lab
from cloudvmi.remote import codec
from cloudvmi.remote.client import CHUNK, RemoteError, _pieces, connect
from cloudvmi.remote.proto import cloudvmi_pb2 as pb
from cloudvmi.remote.proto import cloudvmi_pb2_grpc as rpc
from cloudvmi.remote.upload import Upload
from cloudvmi.stream import ByteStream, StreamError

from agent_process import Agent

MIB = 1 << 20
IDLE = 3  # the agent's payload_idle in the live tests (seconds)
SIZE_MIB = 128  # the large upload


# -- the stream's contract (no guest) -------------------------------------------------------
def test_a_stream_gives_its_bytes_in_windows_of_any_size():
    data = os.urandom(3 * MIB + 17)
    pieces = [data[i:i + 12345] for i in range(0, len(data), 12345)]
    s = ByteStream(len(data), iter(pieces))
    got = b"".join(s.chunks(MIB))
    assert got == data and s.consumed == len(data)
    assert s.read(10) == b""


def test_a_stream_that_ends_early_or_runs_over_is_refused():
    short = ByteStream(10, iter([b"12345"]))
    with pytest.raises(StreamError, match="ended after 5 of 10"):
        short.read(10)
    long = ByteStream(4, iter([b"12", b"345"]))
    with pytest.raises(StreamError, match="goes on past"):
        long.read(4)


def test_streams_of_files_rewind_and_report_progress(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"abcdef" * 1000)
    seen: list[int] = []
    with path.open("rb") as f:
        s = ByteStream.of_file(f).on_progress(seen.append)
        assert s.read(100) == (b"abcdef" * 17)[:100]
        assert s.rewind() and s.consumed == 0
        assert s.readall() == path.read_bytes()
    assert seen[-1] == 6000
    once = ByteStream(3, iter([b"abc"]))
    once.read(1)
    assert not once.rewind()  # a network source cannot start again


def test_the_codec_carries_a_stream_as_the_last_blob():
    stream = ByteStream.of_bytes(b"x" * 5000)
    text, blobs = codec.encode({"path": "/a", "data": stream})
    assert codec.blob_sizes(text) == [5000] and blobs == [stream]
    tail = ByteStream(5000, iter([b"y" * 5000]))
    args = codec.decode(text, b"", tail=tail)
    assert args["data"] is tail
    with pytest.raises(ValueError, match="size announced"):
        codec.decode(text, b"", tail=ByteStream(4999, iter([])))


def test_the_client_sends_streams_in_bounded_messages():
    data = os.urandom(2 * CHUNK + 5)
    stream = ByteStream(len(data), iter([data[i:i + 7777] for i in range(0, len(data), 7777)]))
    messages = list(_pieces([b"head", stream]))
    assert all(len(m) <= CHUNK for m in messages)
    assert b"".join(messages) == b"head" + data


def test_an_upload_that_stalls_is_cut_off():
    cancelled = threading.Event()
    gate = threading.Event()

    def requests():
        yield pb.Call(data=b"b" * 100)
        gate.wait(10)  # then nothing more, for longer than the idle limit

    up = Upload(1000, b"a" * 100, requests(), idle=0.5, cancel=cancelled.set)
    try:
        assert up.stream.read(200) == b"a" * 100 + b"b" * 100
        started = time.monotonic()
        with pytest.raises(StreamError, match="stalled"):
            up.stream.read(800)
        assert 0.4 < time.monotonic() - started < 3 and cancelled.is_set()
        assert up.received()["$bytes"] == {"len": 200, "sha256": None}
    finally:
        gate.set()
        up.close()


def test_an_upload_holds_a_bounded_window():
    """The reader thread stops reading when its queue is full: the rest waits in gRPC's flow
    control (here: in the generator, never pulled)."""
    pulled = []

    def requests():
        for i in range(1000):
            pulled.append(i)
            yield pb.Call(data=b"z" * 1000)

    up = Upload(1000 * 1000 + 10, b"0" * 10, requests(), idle=5, cancel=lambda: None)
    try:
        time.sleep(0.5)
        assert len(pulled) <= 8
        assert len(up.stream.read(10 + 500 * 1000)) == 10 + 500 * 1000
        up.stream.read(500 * 1000)
        assert up.received()["$bytes"]["sha256"] == hashlib.sha256(
            b"0" * 10 + b"z" * 1000 * 1000).hexdigest()
    finally:
        up.close()


# -- a real guest, through a real agent ----------------------------------------------------
@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("upload")
    g = lab.up(f"up{uuid.uuid4().hex[:6]}", kernel="6.1", mem="512M")
    agent = None
    try:
        agent = Agent(root, settings={"payload_idle": IDLE}, vms=(g.name,))
        yield g, agent, root
    finally:
        if agent is not None:
            agent.stop()
        lab.down(g.name)


def _anon_rss(pid: int) -> int:
    """Private memory the process holds (not the guest RAM it maps, which it also touches)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no RssAnon")


class PeakAnon:
    """The highest RssAnon of PID while the block runs, sampled every 20 ms."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak, self._done = pid, 0, threading.Event()

    def _sample(self) -> None:
        while not self._done.wait(0.02):
            self.peak = max(self.peak, _anon_rss(self.pid))

    def __enter__(self) -> "PeakAnon":
        self.before = _anon_rss(self.pid)
        self._thread = threading.Thread(target=self._sample)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()


def _write_records(root: Path, path: str) -> tuple[dict, dict]:
    """The last write_file intent on PATH in the agent's audit log, and its outcome."""
    records = [json.loads(line) for line in (root / "audit.jsonl").read_text().splitlines()]
    intent = [r for r in records if r["op"] == "write_file" and r["result"] == "started"
              and (r.get("args") or {}).get("path") == path][-1]
    return intent, next(r for r in records if r.get("ref") == intent["seq"])


def test_a_local_write_streams_from_a_file(served):
    """Before the agent attaches (QMP serves one client at a time)."""
    g, _, _ = served
    from cloudvmi.vm import attach

    data = os.urandom(5 * MIB + 3)
    vm = attach(g.name, writable=True)
    try:
        vm.guest.write_file("/tmp/local", ByteStream.of_file(io.BytesIO(data), len(data)))
        assert vm.guest.read_file("/tmp/local") == data
        with pytest.raises((StreamError, RemoteError)):
            vm.guest.write_file("/tmp/short", ByteStream(100, iter([b"x" * 10])))
    finally:
        vm.close()


def test_a_large_upload_streams_through_the_agent(served, tmp_path):
    g, agent, root = served
    source = tmp_path / "big"
    block = os.urandom(MIB)
    with source.open("wb") as f:
        for i in range(SIZE_MIB):
            f.write(block[i:] + block[:i])
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    vm = connect(agent.address, g.name)
    try:
        vm.guest.write_file("/tmp/warm", b"warm")  # attach, locate, first hijack
        with PeakAnon(agent.proc.pid) as memory, source.open("rb") as f:
            vm.guest.write_file("/tmp/big", ByteStream.of_file(f))
        grown = memory.peak - memory.before
    finally:
        vm.close()
    assert g.console.check("sha256sum /tmp/big").split()[0] == digest
    # Held whole, the upload would add at least its size (twice that joined); streamed, a
    # window (about 30 MiB whatever the size: 27 MiB for 16 MiB, 34 MiB for 160 MiB).
    assert grown < SIZE_MIB * MIB // 2, f"the agent grew by {grown / MIB:.0f} MiB"
    intent, outcome = _write_records(root, "/tmp/big")
    assert intent["args"]["data"] == {"$stream": {"len": SIZE_MIB * MIB}}
    assert outcome["result"] == "ok"
    assert outcome["args"]["received"]["$bytes"] == {"len": SIZE_MIB * MIB, "sha256": digest}


def test_an_upload_cut_off_part_way_leaves_the_guest_running(served):
    """A client that stalls after 3 MiB of an announced 64: the agent gives up after its idle
    time, the hijacked thread is restored, the VM runs, the file holds what arrived."""
    g, agent, root = served
    gate = threading.Event()

    def calls():
        yield pb.Call(vm=g.name, capability="guest.write_file",
                      args_json=json.dumps({"path": "/tmp/cut", "data": {"__blob__": 64 * MIB}}),
                      data=b"c" * MIB)
        for _ in range(2):
            yield pb.Call(data=b"c" * MIB)
        gate.wait(60)

    channel = grpc.insecure_channel(agent.address)
    try:
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as caught:
            for _ in rpc.AgentStub(channel).Invoke(calls(), timeout=60):
                pass
        took = time.monotonic() - started
    finally:
        gate.set()
        channel.close()
    assert caught.value.code() in (grpc.StatusCode.CANCELLED,
                                   grpc.StatusCode.FAILED_PRECONDITION)
    assert IDLE - 0.5 < took < IDLE + 15
    size = int(g.console.check("stat -c %s /tmp/cut"))  # the guest runs: it answers
    assert 0 <= size <= 3 * MIB
    time.sleep(0.5)  # the outcome is written as the call unwinds
    _, outcome = _write_records(root, "/tmp/cut")
    assert outcome["result"] == "error" and "stalled" in outcome["detail"]
    assert outcome["args"]["received"]["$bytes"]["sha256"] is None
    # The guest still takes a normal write, through the same agent.
    vm = connect(agent.address, g.name)
    try:
        assert vm.running()
        vm.guest.write_file("/tmp/after", b"fine")
        assert vm.guest.read_file("/tmp/after") == b"fine"
    finally:
        vm.close()
