"""A VM on another node, through its agent, with the interface of a local VM:
`vm.linux.processes()`, `vm.read_physical()`, `vm.guest.read_file()`..."""

import contextlib
import json
import queue
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from cloudvmi.capability import Capability, Facade
from cloudvmi.errors import CloudVMIError
from cloudvmi.interface import held_still
from cloudvmi.redirect.program import Completed, run_program
from cloudvmi.remote import codec
from cloudvmi.remote.proto import cloudvmi_pb2 as pb
from cloudvmi.remote.proto import cloudvmi_pb2_grpc as rpc
from cloudvmi.remote.readstream import REOPEN_AFTER, ReadStream
from cloudvmi.stream import ByteStream
from cloudvmi.vm import check_exec_args
from cloudvmi.write.channel import CallResult, GuestCall
from cloudvmi.write.errors import GuestOSError

CHUNK = 1 << 20  # payload bytes per streamed message
ONE_MESSAGE = 8 << 20  # the largest message this client takes
MAX_BUSY_WAIT = 30.0  # seconds a call waits for its share of a busy agent before failing


class RemoteError(CloudVMIError):
    """The agent refused or could not do the call; `kind` names the agent-side error."""

    def __init__(self, message: str, kind: str = "", code: grpc.StatusCode | None = None):
        super().__init__(message)
        self.kind = kind
        self.code = code


class PermissionDenied(RemoteError):
    """The agent's policy does not let this identity do that on that VM."""


@dataclass
class TLS:
    """Client credentials: the CA that signed the agents, and this client's cert and key."""

    ca: Path
    cert: Path
    key: Path

    @classmethod
    def from_dir(cls, directory: str | Path, name: str) -> "TLS":
        d = Path(directory)
        return cls(d / "ca.pem", d / f"{name}.pem", d / f"{name}.key")


def _pieces(blobs: list) -> Iterator[bytes]:
    """The blobs' bytes in messages of at most CHUNK, streams read as they are sent."""
    pending = bytearray()
    for blob in blobs:
        source = blob.chunks(CHUNK) if isinstance(blob, ByteStream) else (
            blob[i:i + CHUNK] for i in range(0, len(blob), CHUNK))
        for part in source:
            pending += part
            while len(pending) >= CHUNK:
                yield bytes(pending[:CHUNK])
                del pending[:CHUNK]
    if pending:
        yield bytes(pending)


def _large_answer(args: dict[str, Any]) -> bool:
    """Whether a read's answer is known to be larger than one message (a memory read says
    its size), so it is streamed at once rather than asked twice."""
    size = args.get("size")
    return isinstance(size, int) and size > ONE_MESSAGE // 2


def _busy(exc: grpc.RpcError) -> bool:
    return exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and '"LimitExceeded"' in (
        exc.details() or "")


def _raise(exc: grpc.RpcError, node: str):
    details = exc.details() or ""
    try:
        info = json.loads(details)
    except ValueError:
        info = {"type": "", "message": details}
    _raise_status(exc.code(), info, details, node)


def _raise_status(code: grpc.StatusCode, info: dict, details: str, node: str):
    """The error a call's status (CODE, and the agent's INFO in its DETAILS) stands for."""
    message = f"{node}: {info.get('message', details)}"
    if code == grpc.StatusCode.PERMISSION_DENIED:
        raise PermissionDenied(message, info.get("type", ""), code) from None
    if info.get("type") == "GuestOSError":
        raise GuestOSError(int(info.get("errno", 0)), message) from None
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED) and \
            info.get("type") != "AuditError":
        raise RemoteError(f"{node}: agent unreachable ({code.name.lower()}): "
                          f"{details[:200]}", "Unavailable", code) from None
    raise RemoteError(message, info.get("type", ""), code) from None


class Node:
    """A connection to one node's agent."""

    def __init__(self, address: str, tls: TLS | None = None, name: str | None = None,
                 timeout: float = 60.0, server_name: str | None = None) -> None:
        self.address = address
        self.name = name or address
        self.timeout = timeout
        options = [("grpc.max_receive_message_length", ONE_MESSAGE),
                   ("grpc.max_send_message_length", ONE_MESSAGE)]
        if tls is None:
            self.channel = grpc.insecure_channel(address, options=options)
        else:
            creds = grpc.ssl_channel_credentials(
                root_certificates=tls.ca.read_bytes(), private_key=tls.key.read_bytes(),
                certificate_chain=tls.cert.read_bytes())
            if server_name:
                options.append(("grpc.ssl_target_name_override", server_name))
            self.channel = grpc.secure_channel(address, creds, options=options)
        self.stub = rpc.AgentStub(self.channel)
        self._streams_reads = False  # the agent has no Read (older): stream every call
        self._reads: ReadStream | None = None  # reads kept open (None: not yet, or no more)
        self._no_read_stream = False  # the agent has no Reads (older)
        self._streams_refused_until = 0.0  # no new stream before (the agent had enough)

    def vms(self) -> list[pb.VMInfo]:
        try:
            return list(self.stub.ListVMs(pb.Empty(), timeout=self.timeout).vms)
        except grpc.RpcError as exc:
            _raise(exc, self.name)

    def invoke(self, vm: str, cap: Capability, args: dict[str, Any], as_pid: int = 0) -> Any:
        """Run capability CAP on VM through the agent; its result, as the local call gives."""
        text, blobs = codec.encode(args)
        streams = [b for b in blobs if isinstance(b, ByteStream)]
        small = sum(len(b) for b in blobs) <= CHUNK and not streams

        def calls():
            pieces = _pieces(blobs)
            yield pb.Call(vm=vm, capability=cap.key, args_json=text, as_pid=as_pid,
                          data=next(pieces, b""))
            for piece in pieces:
                yield pb.Call(data=piece)

        deadline = time.monotonic() + min(self.timeout, MAX_BUSY_WAIT)
        pause = 0.02
        while True:
            try:
                if small and cap.permission == "read" and not self._streams_reads \
                        and not _large_answer(args):
                    call = next(calls())
                    reply = self._read_streamed(call)
                    if reply is not None:
                        return codec.decode(reply.json, reply.data, cap.result)
                    try:  # one message each way: the cheapest round trip
                        reply = self.stub.Read(call, timeout=self.timeout)
                        return codec.decode(reply.json, reply.data, cap.result)
                    except grpc.RpcError as exc:
                        if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                            self._streams_reads = True  # an agent from before Read
                        elif exc.code() != grpc.StatusCode.OUT_OF_RANGE:
                            raise
                if small:  # all in the first message
                    replies = self.stub.InvokeOne(next(calls()), timeout=self.timeout)
                else:
                    replies = self.stub.Invoke(calls(), timeout=self.timeout)
                first = next(replies)
                data = b"".join(r.data for r in replies)
                break
            except grpc.RpcError as exc:
                # Over this client's share of the agent: refused before anything was done,
                # so trying again later is safe (a stream sent in part starts again).
                if _busy(exc) and time.monotonic() + pause < deadline \
                        and all(s.rewind() for s in streams):
                    time.sleep(pause)
                    pause = min(pause * 2, 1.0)
                    continue
                _raise(exc, self.name)
        return codec.decode(first.json, data, cap.result)

    def _read_streamed(self, call: pb.Call) -> pb.Reply | None:
        """The read's answer through the stream of reads, or None to ask the usual way
        (no stream, busy, gone; or a refusal the unary path handles: over this client's
        share, or too large for one message). Other refusals raise as the call's would."""
        if self._no_read_stream or time.monotonic() < self._streams_refused_until:
            return None
        stream = self._reads
        if stream is None or not stream.usable:
            if stream is not None:
                stream.close()
            stream = self._reads = ReadStream(self.stub, self.timeout)
        reply, refused = stream.ask(call)
        if stream.unsupported:
            self._no_read_stream = True
        if stream.refused:  # the agent holds as many of our streams as it may: ask unary
            self._streams_refused_until = time.monotonic() + REOPEN_AFTER
        if refused is None:
            return reply
        code = getattr(grpc.StatusCode, str(refused.get("code")), grpc.StatusCode.UNKNOWN)
        if code in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.OUT_OF_RANGE):
            return None
        _raise_status(code, refused, json.dumps(refused), self.name)

    def vm(self, name: str) -> "RemoteVM":
        return RemoteVM(self, name)

    def syscall_channel(self, vm: str, argv: list[str], as_pid: int = 0,
                        mode: str = "stop") -> "RemoteChannel":
        return RemoteChannel(self, vm, argv, as_pid, mode)

    def close(self) -> None:
        if self._reads is not None:
            self._reads.close()
        self.channel.close()


class RemoteChannel:
    """A syscall channel through the agent (its Channel RPC): the same `run(calls)` as a
    local one; the agent holds the guest thread until the stream ends."""

    def __init__(self, node: Node, vm: str, argv: list[str], as_pid: int = 0,
                 mode: str = "stop") -> None:
        self.node = node
        self.first = pb.Call(vm=vm, capability="guest.exec",
                             args_json=json.dumps({"argv": argv, "channel": mode}),
                             as_pid=as_pid)
        self.resumes = 0
        self._queue: queue.Queue = queue.Queue()
        self._replies = None

    def __enter__(self) -> "RemoteChannel":
        self._queue.put(self.first)
        try:
            self._replies = self.node.stub.Channel(iter(self._queue.get, None))
            limits = json.loads(next(self._replies).json)
        except grpc.RpcError as exc:
            self._queue.put(None)
            _raise(exc, self.node.name)
        self._helper = int(limits["helper_pid"])
        self.max_calls = int(limits["max_calls"])
        self.max_bytes = int(limits["max_bytes"])
        return self

    def __exit__(self, *exc: object) -> None:
        self._queue.put(None)  # ends the stream: the agent releases the guest thread
        with contextlib.suppress(grpc.RpcError, StopIteration):
            for _ in self._replies:
                pass

    def helper_pid(self) -> int:
        return self._helper

    def run(self, calls: list[GuestCall]) -> list[CallResult]:
        text, blobs = codec.encode(calls)
        self._queue.put(pb.Call(args_json=text, data=b"".join(blobs)))
        try:
            reply = next(self._replies)
        except grpc.RpcError as exc:
            _raise(exc, self.node.name)
        except StopIteration:
            raise RemoteError(f"{self.node.name}: the agent ended the channel", "Unavailable",
                              grpc.StatusCode.UNAVAILABLE) from None
        self.resumes += 1
        return codec.decode(reply.json, reply.data, list[CallResult])


class RemoteLinux(Facade):
    """`vm.linux` of a remote VM: views run by the agent; `kernel` built here from the
    profile the agent sends once, its memory read through the agent."""

    _facet = "linux"

    def __init__(self, vm: "RemoteVM") -> None:
        self.vm = vm
        self._kernel = None

    def _invoke(self, cap: Capability, args: dict[str, Any]) -> Any:
        return self.vm.node.invoke(self.vm.name, cap, args)

    def ready(self) -> None:
        """Nothing to do here: the agent locates the kernel."""

    @property
    def kernel(self):
        if self._kernel is None:
            from cloudvmi.remote.kernel import remote_kernel

            self._kernel = remote_kernel(self.vm)
        return self._kernel


class RemoteGuestOps(Facade):
    """`vm.guest` of a remote VM: the guest operations, run by the agent."""

    _facet = "guest"

    def __init__(self, vm: "RemoteVM", pid: int = 0) -> None:
        self.vm = vm
        self.pid = pid

    def as_process(self, pid: int) -> "RemoteGuestOps":
        return RemoteGuestOps(self.vm, pid)

    def _invoke(self, cap: Capability, args: dict[str, Any]) -> Any:
        return self.vm.node.invoke(self.vm.name, cap, args, self.pid)


class RemoteVM(Facade):
    """The local VM interface (cloudvmi.interface.VMInterface), served by an agent."""

    _facet = "vm"
    live = True  # agents serve running VMs

    def __init__(self, node: Node, name: str, owns_node: bool = False) -> None:
        self.node = node
        self.name = name
        self.owns_node = owns_node  # a node shared by several VMs stays open
        self.linux = RemoteLinux(self)
        self.guest = RemoteGuestOps(self)

    def _invoke(self, cap: Capability, args: dict[str, Any]) -> Any:
        return self.node.invoke(self.name, cap, args)

    def snapshot(self) -> contextlib.AbstractContextManager[None]:
        return held_still(self)

    def exec(self, argv: list[str], stdin: bytes | None = b"", timeout: float = 60.0,
             cwd: str = "/", capture: bool = True, channel: str = "stop") -> Completed:
        """Run a host program here with its guest calls made by the agent's node (through
        a guest helper the agent keeps, with CHANNEL "persistent")."""
        check_exec_args(timeout, cwd)
        with self.node.syscall_channel(self.name, argv, self.guest.pid, channel) as ch:
            return run_program(ch, argv, stdin, capture, timeout, cwd)

    def close(self) -> None:
        if self.owns_node:
            self.node.close()

    def __enter__(self) -> "RemoteVM":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def connect(address: str, vm: str, tls: TLS | None = None, **kwargs) -> RemoteVM:
    """A VM on another node: cloudvmi.connect("10.0.0.2:7443", "web-1", tls=TLS(...))."""
    return RemoteVM(Node(address, tls, **kwargs), vm, owns_node=True)
