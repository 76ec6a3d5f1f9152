"""The agent under abuse (issue 14): a real agent process with mutual TLS and three client
identities, no guest needed. An upload nobody may make is refused before it is read; stalled
uploads take one client's share, not the agent; reads are recorded; a change whose intent
cannot be recorded is refused."""

import json
import threading
import time
from pathlib import Path

import grpc
import pytest

from cloudvmi.remote.audit import verify
from cloudvmi.remote.certs import init_ca, issue
from cloudvmi.remote.proto import cloudvmi_pb2 as pb
from cloudvmi.remote.proto import cloudvmi_pb2_grpc as rpc

from agent_process import Agent

MIB = 1 << 20
IDLE = 3  # the agent's payload_idle here (seconds)


class TLSAgent(Agent):
    """An agent with mutual TLS, serving no VM, with three client identities."""

    def __init__(self, root: Path) -> None:
        pki = root / "pki"
        init_ca(pki)
        issue(pki, pki, "node-agent", "agent", hosts=["127.0.0.1"])
        for client in ("ops", "viewer", "nobody"):
            issue(pki, pki, client, "client")
        self.pki = pki
        self.audit = root / "audit.jsonl"
        super().__init__(root, config=f"""
[agent]
node = "abuse"
listen = "127.0.0.1:0"
ca = "{pki / 'ca.pem'}"
cert = "{pki / 'node-agent.pem'}"
key = "{pki / 'node-agent.key'}"
audit_log = "{self.audit}"
lab = false
workers = 8
calls_per_identity = 4
payload_idle = {IDLE}

[[allow]]
identity = "ops"
vms = ["vm-x"]
permissions = ["read", "write", "operate"]

[[allow]]
identity = "viewer"
vms = ["*"]
permissions = ["read"]
""")

    def stub(self, who: str) -> tuple[grpc.Channel, rpc.AgentStub]:
        creds = grpc.ssl_channel_credentials(
            (self.pki / "ca.pem").read_bytes(), (self.pki / f"{who}.key").read_bytes(),
            (self.pki / f"{who}.pem").read_bytes())
        channel = grpc.secure_channel(self.address, creds, options=[
            ("grpc.max_send_message_length", 8 * MIB)])
        return channel, rpc.AgentStub(channel)

    def peak_rss(self) -> int:
        """The agent's high-water mark of resident memory, in bytes."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmHWM")


@pytest.fixture(scope="module")
def agent(tmp_path_factory):
    a = TLSAgent(tmp_path_factory.mktemp("abuse"))
    try:
        yield a
    finally:
        a.stop()


def _upload(size: int, first_chunk: int, more=None):
    """An Invoke of guest.write_file announcing SIZE bytes; MORE yields the rest."""
    yield pb.Call(vm="vm-x", capability="guest.write_file",
                  args_json=json.dumps({"path": "/tmp/x", "data": {"__blob__": size}}),
                  data=bytes(first_chunk))
    if more is not None:
        yield from more()


def _code(call) -> grpc.StatusCode:
    try:
        for _ in call:
            pass
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def test_an_upload_nobody_may_make_is_refused_before_it_is_read(agent):
    channel, stub = agent.stub("nobody")
    before = agent.peak_rss()

    def rest():
        for _ in range(49):
            yield pb.Call(data=bytes(4 * MIB))

    with channel:
        started = time.monotonic()
        code = _code(stub.Invoke(_upload(200 * MIB, 4 * MIB, rest), timeout=60))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert time.monotonic() - started < 10
    assert agent.peak_rss() - before < 64 * MIB


def test_stalled_uploads_take_one_clients_share_not_the_agent(agent):
    """16 uploads of a permitted client that stall after their first message: four are
    admitted (its share), twelve refused at once; another client is answered meanwhile; the
    stalled ones are cut off after the idle time."""
    release = threading.Event()
    codes: list[grpc.StatusCode] = []
    channel, stub = agent.stub("ops")

    def stall():
        release.wait(30)
        return
        yield  # a generator that sends nothing more

    def one():  # a payload small enough to be read whole before the call (larger ones are
        # streamed to the guest: they would stall the write itself, see test_upload_stream)
        codes.append(_code(stub.Invoke(_upload(MIB, MIB // 2, stall), timeout=30)))

    threads = [threading.Thread(target=one) for _ in range(16)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    other_channel, other = agent.stub("viewer")
    with other_channel:
        started = time.monotonic()
        other.ListVMs(pb.Empty(), timeout=5)
        code = _code(other.Invoke(iter([pb.Call(vm="vm-x", capability="vm.running",
                                                args_json="{}")]), timeout=5))
        answered = time.monotonic() - started
    assert code == grpc.StatusCode.NOT_FOUND and answered < 3  # served, not queued
    for t in threads:
        t.join(IDLE + 20)
    release.set()
    channel.close()
    assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) == 12
    assert codes.count(grpc.StatusCode.CANCELLED) == 4  # cut off after payload_idle


def test_reads_and_denials_are_recorded(agent):
    channel, stub = agent.stub("viewer")
    with channel:
        for _ in range(3):
            _code(stub.Invoke(iter([pb.Call(vm="vm-y", capability="vm.running",
                                            args_json="{}")]), timeout=5))
    records = [json.loads(line) for line in agent.audit.read_text().splitlines()]
    reads = [r for r in records if r["who"] == "viewer" and r["vm"] == "vm-y"]
    assert reads and reads[0]["op"] == "running" and reads[0]["result"] == "error"
    assert reads[0]["peer"].startswith("ipv4:127.0.0.1:")  # one record; two more aggregated
    denied = [r for r in records if r["who"] == "nobody" and r["result"] == "denied"]
    assert denied and denied[0]["vm"] == "vm-x"


def test_a_change_whose_intent_cannot_be_recorded_is_refused(agent):
    """The log replaced by a directory: the write is refused (not looked up, not made)."""
    agent.audit.rename(agent.audit.with_suffix(".moved"))
    agent.audit.mkdir()
    channel, stub = agent.stub("ops")
    with channel:
        try:
            for _ in stub.Invoke(_upload(1, 1), timeout=10):
                pass
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.UNAVAILABLE
            assert "AuditError" in exc.details() and "refused" in exc.details()
        else:
            raise AssertionError("a change went ahead without its record")
    agent.audit.rmdir()
    agent.audit.with_suffix(".moved").rename(agent.audit)
    agent.stop()
    assert verify(agent.audit).ok
