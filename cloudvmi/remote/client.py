"""A VM on another node, through its agent, with the interface of a local VM:
`vm.linux.processes()`, `vm.read_physical()`, `vm.guest.read_file()`..."""

import json
from dataclasses import dataclass
from pathlib import Path

import grpc

from cloudvmi.errors import CloudVMIError
from cloudvmi.remote import codec
from cloudvmi.remote.proto import cloudvmi_pb2 as pb
from cloudvmi.remote.proto import cloudvmi_pb2_grpc as rpc
from cloudvmi.write.session import GuestOSError

CHUNK = 1 << 20


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


def _raise(exc: grpc.RpcError, node: str):
    code = exc.code()
    details = exc.details() or ""
    try:
        info = json.loads(details)
    except ValueError:
        info = {"type": "", "message": details}
    message = f"{node}: {info.get('message', details)}"
    if code == grpc.StatusCode.PERMISSION_DENIED:
        raise PermissionDenied(message, info.get("type", ""), code) from None
    if info.get("type") == "GuestOSError":
        raise GuestOSError(int(info.get("errno", 0)), message) from None
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
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
        options = [("grpc.max_receive_message_length", 8 << 20),
                   ("grpc.max_send_message_length", 8 << 20)]
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

    def call(self, method: str, request, stream: bool = False):
        try:
            reply = getattr(self.stub, method)(request, timeout=self.timeout)
            return list(reply) if stream else reply
        except grpc.RpcError as exc:
            _raise(exc, self.name)

    def vms(self) -> list[pb.VMInfo]:
        return list(self.call("ListVMs", pb.Empty()).vms)

    def vm(self, name: str) -> "RemoteVM":
        return RemoteVM(self, name)

    def close(self) -> None:
        self.channel.close()


class RemoteLinux:
    def __init__(self, vm: "RemoteVM") -> None:
        self.vm = vm

    def _view(self, view: str):
        reply = self.vm.node.call("View", pb.ViewRequest(vm=self.vm.name, view=view))
        return codec.view_from_json(view, reply.json)

    def processes(self):
        return self._view("processes")

    def threads(self):
        return self._view("threads")

    def modules(self):
        return self._view("modules")

    def info(self):
        return self._view("info")


class RemoteGuestOps:
    """The guest operations of cloudvmi.write.operations.GuestOps, run by the agent."""

    def __init__(self, vm: "RemoteVM", pid: int = 0) -> None:
        self.vm = vm
        self.pid = pid

    def as_process(self, pid: int) -> "RemoteGuestOps":
        return RemoteGuestOps(self.vm, pid)

    def _op(self, op: str, **kwargs):
        reply = self.vm.node.call("Operate", pb.Operation(
            vm=self.vm.name, op=op, args_json=json.dumps(kwargs), as_pid=self.pid))
        return codec.result_from_json(op, reply.json)

    def read_file(self, path: str) -> bytes:
        chunks = self.vm.node.call("ReadFile", pb.FileRef(vm=self.vm.name, path=path,
                                                          as_pid=self.pid), stream=True)
        return b"".join(c.data for c in chunks)

    def write_file(self, path: str, data: bytes, append: bool = False,
                   mode: int = 0o644) -> None:
        def chunks():
            yield pb.FileChunk(vm=self.vm.name, path=path, append=append, mode=mode,
                               as_pid=self.pid, data=data[:CHUNK])
            for offset in range(CHUNK, len(data), CHUNK):
                yield pb.FileChunk(data=data[offset:offset + CHUNK])

        try:
            self.vm.node.stub.WriteFile(chunks(), timeout=self.vm.node.timeout)
        except grpc.RpcError as exc:
            _raise(exc, self.vm.node.name)

    def kill(self, pid: int, sig: int = 15) -> None:
        self._op("kill", pid=pid, sig=sig)

    def stat(self, path: str, follow: bool = False):
        return self._op("stat", path=path, follow=follow)

    def listdir(self, path: str):
        return self._op("listdir", path=path)

    def mkdir(self, path: str, mode: int = 0o755) -> None:
        self._op("mkdir", path=path, mode=mode)

    def remove(self, path: str) -> None:
        self._op("remove", path=path)

    def chmod(self, path: str, mode: int) -> None:
        self._op("chmod", path=path, mode=mode)

    def chown(self, path: str, uid: int, gid: int) -> None:
        self._op("chown", path=path, uid=uid, gid=gid)

    def sysctl_get(self, key: str) -> str:
        return self._op("sysctl_get", key=key)

    def sysctl_set(self, key: str, value: str) -> None:
        self._op("sysctl_set", key=key, value=value)

    def link_set(self, iface: str, up: bool) -> None:
        self._op("link_set", iface=iface, up=up)

    def set_address(self, iface: str, cidr: str) -> None:
        self._op("set_address", iface=iface, cidr=cidr)

    def run(self, argv: list[str], timeout: float = 30.0) -> tuple[int, bytes]:
        status, output = self._op("run", argv=argv, timeout=timeout)
        return status, output


class RemoteVM:
    """The local VM interface, served by an agent."""

    def __init__(self, node: Node, name: str) -> None:
        self.node = node
        self.name = name
        self.linux = RemoteLinux(self)
        self.guest = RemoteGuestOps(self)

    def _read(self, address: int, size: int, physical: bool, pid: int | None) -> bytes:
        chunks = self.node.call("ReadMemory", pb.MemoryRange(
            vm=self.name, address=address, size=size, physical=physical, pid=pid or 0),
            stream=True)
        return b"".join(c.data for c in chunks)

    def read_physical(self, address: int, size: int) -> bytes:
        return self._read(address, size, True, None)

    def read_virtual(self, address: int, size: int, pid: int | None = None) -> bytes:
        return self._read(address, size, False, pid)

    def write_physical(self, address: int, data: bytes) -> None:
        self.node.call("WriteMemory", pb.MemoryWrite(vm=self.name, address=address, data=data,
                                                     physical=True))

    def write_virtual(self, address: int, data: bytes, pid: int | None = None) -> None:
        self.node.call("WriteMemory", pb.MemoryWrite(vm=self.name, address=address, data=data,
                                                     physical=False, pid=pid or 0))

    def close(self) -> None:
        self.node.close()

    def __enter__(self) -> "RemoteVM":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def connect(address: str, vm: str, tls: TLS | None = None, **kwargs) -> RemoteVM:
    """A VM on another node: cloudvmi.connect("10.0.0.2:7443", "web-1", tls=TLS(...))."""
    return Node(address, tls, **kwargs).vm(vm)
