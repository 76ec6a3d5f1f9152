"""`cloudvmi agent serve`: one per host node, serving its VMs over gRPC with mutual TLS.

Every call is authorized from the config by the client certificate's identity (CN), per VM
and per permission (read, write, operate); every write, operation and denial goes into the
hash-chained audit log. Bulk data streams in chunks; request sizes and concurrency are capped.
"""

import json
import signal
import threading
from concurrent import futures

import grpc

from cloudvmi.control.gdbstub import GDBStubError
from cloudvmi.control.qmp import QMPError
from cloudvmi.errors import CloudVMIError
from cloudvmi.remote import codec
from cloudvmi.remote.audit import AuditLog, args_digest
from cloudvmi.remote.config import AgentConfig
from cloudvmi.remote.proto import cloudvmi_pb2 as pb
from cloudvmi.remote.proto import cloudvmi_pb2_grpc as rpc
from cloudvmi.remote.registry import Registry, UnknownVM
from cloudvmi.write.session import GuestOSError

CHUNK = 4 << 20  # per streamed message: fewer, larger messages stream faster
MAX_READ = 1 << 30  # one ReadMemory request
MAX_FILE = 256 << 20
VIEWS = ("processes", "threads", "modules", "info")
OPERATIONS = {  # name -> permission
    "kill": "operate", "stat": "operate", "listdir": "operate", "mkdir": "operate",
    "remove": "operate", "chmod": "operate", "chown": "operate", "sysctl_get": "operate",
    "sysctl_set": "operate", "link_set": "operate", "set_address": "operate", "run": "operate",
}
INSECURE_IDENTITY = "insecure-loopback"


def _error(context, code: grpc.StatusCode, kind: str, message: str, **extra):
    context.abort(code, json.dumps({"type": kind, "message": message, **extra}))


class AgentService(rpc.AgentServicer):
    def __init__(self, config: AgentConfig, registry: Registry, audit: AuditLog) -> None:
        self.config = config
        self.registry = registry
        self.audit = audit

    # -- who and what ---------------------------------------------------------------------
    def _identity(self, context) -> str:
        if self.config.insecure:
            return INSECURE_IDENTITY
        names = context.auth_context().get("x509_common_name") or []
        return names[0].decode() if names else ""

    def _authorize(self, context, vm: str, permission: str, op: str, args: dict) -> str:
        who = self._identity(context)
        if not who or not self.config.allowed(who, vm, permission):
            self.audit.record(who or "?", vm, op, args, "denied",
                              f"{permission} not granted")
            _error(context, grpc.StatusCode.PERMISSION_DENIED, "PermissionDenied",
                   f"{who or 'this client'} may not {permission} on {vm}")
        return who

    def _call(self, context, vm: str, fn, audit: tuple | None = None):
        """Run FN(vm) under the VM's lock, mapping errors to gRPC statuses (and the audit)."""
        try:
            with self.registry.lock(vm):
                try:
                    result = fn(self.registry.vm(vm))
                except (ConnectionError, BrokenPipeError, OSError) as exc:
                    self.registry.drop(vm)
                    raise CloudVMIError(f"connection to {vm} broke: {exc}") from exc
                except (QMPError, GDBStubError):
                    self.registry.drop(vm)  # the control channel is suspect: attach afresh
                    raise
        except UnknownVM as exc:
            if audit:
                self.audit.record(*audit, "error", str(exc))
            _error(context, grpc.StatusCode.NOT_FOUND, "UnknownVM", str(exc))
        except GuestOSError as exc:
            if audit:
                self.audit.record(*audit, "error", str(exc))
            _error(context, grpc.StatusCode.FAILED_PRECONDITION, "GuestOSError", str(exc),
                   errno=exc.errno)
        except (CloudVMIError, ValueError, TypeError) as exc:
            if audit:
                self.audit.record(*audit, "error", str(exc))
            _error(context, grpc.StatusCode.FAILED_PRECONDITION, type(exc).__name__, str(exc))
        if audit:
            self.audit.record(*audit, "ok", "")
        return result

    # -- RPCs -------------------------------------------------------------------------------
    def ListVMs(self, request, context):
        self._identity(context)
        return pb.VMList(node=self.config.node, vms=[
            pb.VMInfo(name=e.name, kind=e.kind, running=True, detail=e.detail)
            for e in self.registry.discover()
            if self.config.allowed(self._identity(context), e.name, "read")])

    def View(self, request, context):
        if request.view not in VIEWS:
            _error(context, grpc.StatusCode.INVALID_ARGUMENT, "ValueError",
                   f"unknown view {request.view!r}")
        self._authorize(context, request.vm, "read", request.view, {})
        result = self._call(context, request.vm,
                            lambda vm: getattr(vm.linux, request.view)())
        return pb.JsonReply(json=codec.dumps(result))

    def ReadMemory(self, request, context):
        if request.size > MAX_READ:
            _error(context, grpc.StatusCode.INVALID_ARGUMENT, "ValueError",
                   f"read of {request.size} bytes over the {MAX_READ} limit")
        self._authorize(context, request.vm, "read", "read_memory", {})
        done = 0
        while done < request.size:
            n = min(CHUNK, request.size - done)
            address = request.address + done

            def read(vm, address=address, n=n):
                if request.physical:
                    return vm.read_physical(address, n)
                return vm.read_virtual(address, n, request.pid or None)

            yield pb.Chunk(offset=done, data=self._call(context, request.vm, read))
            done += n

    def WriteMemory(self, request, context):
        args = {"address": request.address, "size": len(request.data),
                "physical": request.physical, "pid": request.pid,
                "data_sha256": args_digest(request.data)}
        who = self._authorize(context, request.vm, "write", "write_memory", args)

        def write(vm):
            if request.physical:
                vm.write_physical(request.address, request.data)
            else:
                vm.write_virtual(request.address, request.data, request.pid or None)

        self._call(context, request.vm, write, audit=(who, request.vm, "write_memory", args))
        return pb.Empty()

    def Operate(self, request, context):
        permission = OPERATIONS.get(request.op)
        if permission is None:
            _error(context, grpc.StatusCode.INVALID_ARGUMENT, "ValueError",
                   f"unknown operation {request.op!r}")
        try:
            kwargs = json.loads(request.args_json or "{}")
        except ValueError:
            _error(context, grpc.StatusCode.INVALID_ARGUMENT, "ValueError", "bad arguments")
        args = {**kwargs, "as_pid": request.as_pid}
        who = self._authorize(context, request.vm, permission, request.op, args)
        result = self._call(
            context, request.vm,
            lambda vm: getattr(_ops(vm, request.as_pid), request.op)(**kwargs),
            audit=(who, request.vm, request.op, args))
        return pb.JsonReply(json=codec.dumps(result))

    def ReadFile(self, request, context):
        args = {"path": request.path, "as_pid": request.as_pid}
        who = self._authorize(context, request.vm, "operate", "read_file", args)
        data = self._call(context, request.vm,
                          lambda vm: _ops(vm, request.as_pid).read_file(request.path),
                          audit=(who, request.vm, "read_file", args))
        for offset in range(0, max(len(data), 1), CHUNK):
            yield pb.Chunk(offset=offset, data=data[offset:offset + CHUNK])

    def WriteFile(self, request_iterator, context):
        first = None
        parts = []
        size = 0
        for chunk in request_iterator:
            if first is None:
                first = chunk
            size += len(chunk.data)
            if size > MAX_FILE:
                _error(context, grpc.StatusCode.INVALID_ARGUMENT, "ValueError",
                       f"file over the {MAX_FILE}-byte limit")
            parts.append(chunk.data)
        if first is None:
            _error(context, grpc.StatusCode.INVALID_ARGUMENT, "ValueError", "no file sent")
        data = b"".join(parts)
        args = {"path": first.path, "append": first.append, "mode": first.mode,
                "as_pid": first.as_pid, "size": len(data), "data_sha256": args_digest(data)}
        who = self._authorize(context, first.vm, "operate", "write_file", args)
        self._call(context, first.vm,
                   lambda vm: _ops(vm, first.as_pid).write_file(
                       first.path, data, append=first.append, mode=first.mode or 0o644),
                   audit=(who, first.vm, "write_file", args))
        return pb.Empty()


def _ops(vm, as_pid: int):
    return vm.guest.as_process(as_pid) if as_pid else vm.guest


def build_server(config: AgentConfig, audit: AuditLog) -> tuple[grpc.Server, int, Registry]:
    registry = Registry(config.lab, config.qmp_dirs)
    options = [("grpc.max_receive_message_length", config.max_message_bytes),
               ("grpc.max_send_message_length", config.max_message_bytes)]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=config.workers),
                         options=options, maximum_concurrent_rpcs=config.max_concurrent_rpcs)
    rpc.add_AgentServicer_to_server(AgentService(config, registry, audit), server)
    if config.insecure:
        port = server.add_insecure_port(config.listen)
    else:
        creds = grpc.ssl_server_credentials(
            [(config.key.read_bytes(), config.cert.read_bytes())],
            root_certificates=config.ca.read_bytes(), require_client_auth=True)
        port = server.add_secure_port(config.listen, creds)
    if port == 0:
        raise CloudVMIError(f"cannot listen on {config.listen}")
    return server, port, registry


def serve(config: AgentConfig, ready=None, log_tls_denials: bool = False) -> None:
    """Run until SIGTERM or SIGINT, then finish calls in flight (5 s) and detach from VMs."""
    audit = AuditLog(config.audit_log)
    if log_tls_denials and not config.insecure:
        from cloudvmi.remote import tlslog

        tlslog.watch(lambda reason: audit.record("unauthenticated", "*", "tls-handshake", {},
                                                 "denied", reason))
    server, port, registry = build_server(config, audit)
    server.start()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    if ready:
        ready(port)
    stop.wait()
    server.stop(grace=5).wait()
    registry.close()
