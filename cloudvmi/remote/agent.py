"""`cloudvmi agent serve`: one per host node, serving its VMs over gRPC with mutual TLS.

Every call is authorized from the config by the client certificate's identity (CN), per VM
and per permission (read, write, operate), from its first message, before any payload is
read. A change (write, operation, exec) is recorded in the audit log before the guest is
touched and its outcome after; when the record cannot be written the call is refused (fail
closed). Reads and denials are recorded too, aggregated per window. Each identity has a cap on
calls and payload bytes in flight, and a payload that stalls is cut off, so one client cannot
starve the others.
"""

import contextlib
import json
import os
import signal
import threading
import time
import typing
from concurrent import futures
from pathlib import Path

import grpc

from cloudvmi import capability
from cloudvmi.control.gdbstub import GDBStubError
from cloudvmi.control.qmp import QMPError
from cloudvmi.errors import CloudVMIError
from cloudvmi.remote import codec
from cloudvmi.remote.audit import AuditError, AuditLog, Intent
from cloudvmi.remote.config import AgentConfig
from cloudvmi.remote.identity import Revocations, identity_of
from cloudvmi.remote.limits import CallLimits, LimitExceeded
from cloudvmi.remote.metrics import AgentMetrics
from cloudvmi.remote.proto import cloudvmi_pb2 as pb
from cloudvmi.remote.proto import cloudvmi_pb2_grpc as rpc
from cloudvmi.remote.readstream import ERROR
from cloudvmi.remote.registry import Registry, UnknownVM
from cloudvmi.remote.streamwatch import StreamWatch
from cloudvmi.remote.upload import QUEUED_MESSAGES, Upload
from cloudvmi.stream import ByteStream
from cloudvmi.write.channel import GuestCall
from cloudvmi.write.errors import GuestOSError
from cloudvmi.write.operations import CHANNEL_MODES

EXEC = "guest.exec"  # the channel of a redirected program (operate permission)
EXEC_SECONDS = 3600.0  # the longest a program may hold a guest thread through the agent
EXEC_IDLE = 60.0  # ... and the longest between two of its messages
READS_SECONDS = 30.0  # the longest a stream of reads is kept open (a worker is its)
READS_IDLE = 5.0  # ... and without a read in it
READ_STREAMS = 2  # streams of reads one client may keep open
CHUNK = 4 << 20  # per streamed message: fewer, larger messages stream faster
MAX_PAYLOAD = 256 << 20  # the blobs of one call's arguments (a file written)
STREAM_ABOVE = 1 << 20  # a blob larger than this is streamed to a capability that takes one
UPLOAD_WINDOW = (QUEUED_MESSAGES + 2) * CHUNK  # the most of a streamed upload held at once
REPLY_OVERHEAD = 1024  # a Reply's framing, beside its JSON and data
READ_REPLY_MAX = 8 << 20  # the largest message a client takes (remote/client.py)


def _error(context, code: grpc.StatusCode, kind: str, message: str, **extra):
    context.abort(code, json.dumps({"type": kind, "message": message, **extra}))


class AgentService(rpc.AgentServicer):
    def __init__(self, config: AgentConfig, registry: Registry, audit: AuditLog,
                 metrics: AgentMetrics | None = None) -> None:
        self.config = config
        self.registry = registry
        self.audit = audit
        self.metrics = metrics or AgentMetrics()
        self.limits = CallLimits(config.calls_per_identity, config.bytes_per_identity)
        self.revocations = Revocations(config)
        self.read_streams = StreamWatch(READ_STREAMS, READS_IDLE, READS_SECONDS)

    # -- who and what ---------------------------------------------------------------------
    def _identity(self, context) -> str:
        """The client's one CN, or "" (denied): revoked, several CNs, not a client's."""
        return identity_of(context.auth_context(), self.config, self.revocations) or ""

    def _authorize(self, context, vm: str, permission: str, op: str, args: dict) -> str:
        who = self._identity(context)
        if not who or not self.config.allowed(who, vm, permission):
            self._record(who or "?", vm, op, args, "denied", f"{permission} not granted",
                         context)
            self.metrics.denied.labels(op).inc()
            _error(context, grpc.StatusCode.PERMISSION_DENIED, "PermissionDenied",
                   f"{who or 'this client'} may not {permission} on {vm}")
        return who

    def _record(self, who: str, vm: str, op: str, args: dict, result: str, detail: str,
                context, aggregate: bool = False) -> None:
        """A one-shot record (a denial, a read): an audit log that fails refuses the call."""
        try:
            self.audit.record(who, vm, op, args, result, detail, peer=context.peer(),
                              aggregate=aggregate)
        except AuditError as exc:
            _error(context, grpc.StatusCode.UNAVAILABLE, "AuditError",
                   f"the agent cannot record this call, so it is refused: {exc}")

    def _refuse_if_dump(self, context, who: str, vm: str, op: str, args: dict) -> None:
        """A dump is read-only: a change to it is refused (and recorded) before any of its
        arguments are read. A name no VM has is left to the call itself (looked up after its
        intent is recorded, as for any VM)."""
        try:
            read_only = self.registry.read_only(vm)
        except UnknownVM:
            return
        if read_only:
            self._record(who, vm, op, args, "error", "refused: a memory dump is read-only",
                         context)
            self.metrics.calls.labels(op, "refused").inc()
            _error(context, grpc.StatusCode.FAILED_PRECONDITION, "ReadOnlyVM",
                   f"{vm} is a memory dump: read-only (views and memory reads only)")

    def _intent(self, context, who: str, vm: str, op: str, args: dict) -> Intent:
        """Record that a change starts, before it is made; none is made if this fails."""
        try:
            return self.audit.intent(who, vm, op, args, peer=context.peer())
        except AuditError as exc:
            self.metrics.calls.labels(op, "refused").inc()
            _error(context, grpc.StatusCode.UNAVAILABLE, "AuditError",
                   f"the agent cannot record this change, so it is refused: {exc}")

    def _outcome(self, intent: Intent | tuple | None, result: str, detail: str,
                 args: dict | None = None, context=None) -> None:
        """How a change (INTENT) or a read ((who, vm, op, args), aggregated) ended."""
        if intent is None:
            return
        if isinstance(intent, tuple):
            self._record(*intent, result, detail, context, aggregate=True)
            return
        # The change is made; if its outcome cannot be written, its intent stays on record,
        # open, and `audit verify` says so.
        with contextlib.suppress(AuditError):
            self.audit.outcome(intent, result, detail, args)

    def _call(self, context, vm: str, fn, intent: Intent | tuple | None = None,
              op: str = "call", received=None):
        """Run FN(vm) under the VM's lock, mapping errors to gRPC statuses (and the audit).
        RECEIVED() gives what a streamed upload delivered, for the outcome record."""
        started = time.monotonic()
        try:
            result = self._locked(context, vm, fn, intent, received)
        except BaseException:
            self.metrics.calls.labels(op, "error").inc()
            raise
        finally:
            self.metrics.latency.labels(op).observe(time.monotonic() - started)
            self.metrics.vms.set(self.registry.attached())
        self.metrics.calls.labels(op, "ok").inc()
        return result

    def _locked(self, context, vm: str, fn, intent: Intent | tuple | None, received=None):
        def outcome(result: str, detail: str) -> None:
            self._outcome(intent, result, detail, context=context,
                          args={"received": received()} if received else None)

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
            outcome("error", str(exc))
            _error(context, grpc.StatusCode.NOT_FOUND, "UnknownVM", str(exc))
        except GuestOSError as exc:
            outcome("error", str(exc))
            _error(context, grpc.StatusCode.FAILED_PRECONDITION, "GuestOSError", str(exc),
                   errno=exc.errno)
        except (CloudVMIError, ValueError, TypeError) as exc:
            outcome("error", str(exc))
            _error(context, grpc.StatusCode.FAILED_PRECONDITION, type(exc).__name__, str(exc))
        except BaseException as exc:
            outcome("error", f"{type(exc).__name__}: {exc}")
            raise
        outcome("ok", "")
        return result

    # -- RPCs -------------------------------------------------------------------------------
    def ListVMs(self, request, context):
        who = self._identity(context)
        return pb.VMList(node=self.config.node, vms=[
            pb.VMInfo(name=e.name, kind=e.kind, running=e.kind != "dump", detail=e.detail)
            for e in self.registry.discover() if self.config.allowed(who, e.name, "read")])

    def Invoke(self, request_iterator, context):
        """One capability call: authorized from its first message, before any payload is
        read; the payload is bounded by what that message announces and by the caller's
        share of the agent."""
        first = next(request_iterator, None)
        if first is None:
            _error(context, grpc.StatusCode.INVALID_ARGUMENT, "ValueError", "empty call")
        yield from _replies(self._serve(first, request_iterator, context))

    def InvokeOne(self, request, context):
        yield from _replies(self._serve(request, None, context))

    def Read(self, request, context):
        """A read answered in one message (see the proto): refused for anything but reads,
        and for an answer over the message limit (the client then streams it)."""
        cap = capability.by_key(request.capability)
        if cap is not None and cap.permission != "read":
            _error(context, grpc.StatusCode.INVALID_ARGUMENT, "ValueError",
                   f"{cap.key} is not a read: call it through Invoke")
        text, blobs = codec.encode(self._serve(request, None, context))
        size = len(text.encode()) + sum(len(b) for b in blobs)
        if size > min(self.config.max_message_bytes, READ_REPLY_MAX) - REPLY_OVERHEAD:
            _error(context, grpc.StatusCode.OUT_OF_RANGE, "TooLarge",
                   f"an answer of {size} bytes does not fit one message")
        return pb.Reply(json=text, data=b"".join(blobs))

    def Reads(self, request_iterator, context):
        """Read after read on one stream (see the proto): each message goes through Read,
        authorization, limits and audit included; what Read would refuse with a status is
        answered in the stream instead. A client keeps at most READ_STREAMS of them open,
        each ended after READS_IDLE seconds without a read and READS_SECONDS in all."""
        who = self._identity(context)
        if not who:
            self._record("?", "*", "reads", {}, "denied", "no identity", context)
            _error(context, grpc.StatusCode.PERMISSION_DENIED, "PermissionDenied",
                   "this client may not read")
        try:
            stream = self.read_streams.open(who, context.cancel)
        except LimitExceeded as exc:
            _error(context, grpc.StatusCode.RESOURCE_EXHAUSTED, "LimitExceeded", str(exc))
        answering = _Answering(context)
        try:
            for message in request_iterator:
                with stream.reading():
                    try:
                        reply = self.Read(message, answering)
                    except _Refused as refused:
                        reply = pb.Reply(json=json.dumps({ERROR: refused.info}))
                yield reply
        finally:
            stream.close()

    def _serve(self, first, request_iterator, context):
        """Authorize, admit, read the payload, record and run the call FIRST starts (the
        rest of its payload in REQUEST_ITERATOR, None when it is all in FIRST); its result."""
        cap = capability.by_key(first.capability)
        if cap is None:
            _error(context, grpc.StatusCode.INVALID_ARGUMENT, "ValueError",
                   f"unknown capability {first.capability!r}")
        try:
            sizes = codec.blob_sizes(first.args_json or "{}")
        except ValueError:
            _error(context, grpc.StatusCode.INVALID_ARGUMENT, "ValueError", "bad arguments")
        if sum(sizes) > MAX_PAYLOAD:
            _error(context, grpc.StatusCode.INVALID_ARGUMENT, "ValueError",
                   f"payload of {sum(sizes)} bytes over the {MAX_PAYLOAD}-byte limit")
        summary = {"args_json": first.args_json, "as_pid": first.as_pid}
        who = self._authorize(context, first.vm, cap.permission, cap.name, summary)
        if cap.permission != "read" or cap.live:
            self._refuse_if_dump(context, who, first.vm, cap.name, summary)
        # A large blob a capability takes as a stream is written as it arrives: only a
        # window of it is ever held, and only that counts against the caller's share.
        streamed = (request_iterator is not None and len(sizes) == 1
                    and sizes[0] > STREAM_ABOVE and _takes_stream(cap))
        try:
            slot = self.limits.enter(who, min(sizes[0], UPLOAD_WINDOW) if streamed
                                     else sum(sizes))
        except LimitExceeded as exc:
            self.metrics.calls.labels(cap.name, "limited").inc()
            _error(context, grpc.StatusCode.RESOURCE_EXHAUSTED, "LimitExceeded", str(exc))
        upload = None
        with slot:
            try:
                if streamed:
                    upload = Upload(sizes[0], first.data, request_iterator,
                                    self.config.payload_idle, context.cancel)
                    raw = codec.decode(first.args_json or "{}", b"", tail=upload.stream)
                else:
                    raw = codec.decode(first.args_json or "{}",
                                       self._payload(context, first, request_iterator,
                                                     sum(sizes)))
                args = codec.check_args(cap, raw)
            except (TypeError, ValueError) as exc:
                if upload is not None:
                    upload.close()
                _error(context, grpc.StatusCode.INVALID_ARGUMENT, "TypeError", str(exc))
            recorded = {**args, "as_pid": first.as_pid}
            try:
                if cap.permission == "read":  # recorded when done, aggregated per window
                    intent = (who, first.vm, cap.name, recorded)
                else:  # recorded before the guest is touched
                    intent = self._intent(context, who, first.vm, cap.name, recorded)
                result = self._call(context, first.vm,
                                    lambda vm: _dispatch(vm, cap, args, first.as_pid),
                                    intent=intent, op=cap.name,
                                    received=upload.received if upload else None)
            finally:
                if upload is not None:
                    upload.close()
        return result

    def Channel(self, request_iterator, context):
        """A redirected program's guest calls: authorized and recorded before the guest is
        touched; bounded in time, in idleness and per message; released when the stream
        ends for any reason (the client finished, died, or was cut off)."""
        first = next(request_iterator, None)
        if first is None or first.capability != EXEC:
            _error(context, grpc.StatusCode.INVALID_ARGUMENT, "ValueError",
                   f"a channel starts with capability {EXEC!r}")
        argv, mode = _exec_request(context, first.args_json)
        summary = {"argv": argv, "as_pid": first.as_pid, "channel": mode}
        who = self._authorize(context, first.vm, "operate", "exec", summary)
        self._refuse_if_dump(context, who, first.vm, "exec", summary)
        try:
            slot = self.limits.enter(who, 0)
        except LimitExceeded as exc:
            _error(context, grpc.StatusCode.RESOURCE_EXHAUSTED, "LimitExceeded", str(exc))
        try:
            intent = self._intent(context, who, first.vm, "exec", summary)  # fails closed
        except BaseException:
            slot.release()
            raise
        idle = threading.Timer(EXEC_IDLE, context.cancel)
        counts = {"runs": 0, "calls": 0}
        outcome = ("error", "stream ended early")
        try:
            with self.registry.lock(first.vm):
                vm = self.registry.vm(first.vm)
                ops = vm.guest.as_process(first.as_pid) if first.as_pid else vm.guest
                with ops.channel(mode) as channel:
                    yield pb.Reply(json=json.dumps({
                        "helper_pid": channel.helper_pid(), "max_calls": channel.max_calls,
                        "max_bytes": channel.max_bytes}))
                    idle.start()
                    deadline = time.monotonic() + EXEC_SECONDS
                    for message in request_iterator:
                        idle.cancel()
                        if time.monotonic() > deadline:
                            raise CloudVMIError(f"exec ran over {EXEC_SECONDS} s")
                        calls = _exec_calls(message, channel.max_bytes)
                        results = channel.run(calls)
                        counts["runs"] += 1
                        counts["calls"] += len(calls)
                        text, blobs = codec.encode(results)
                        yield pb.Reply(json=text, data=b"".join(blobs))
                        idle = threading.Timer(EXEC_IDLE, context.cancel)
                        idle.start()
            outcome = ("ok", "")
        except UnknownVM as exc:
            outcome = ("error", str(exc))
            _error(context, grpc.StatusCode.NOT_FOUND, "UnknownVM", str(exc))
        except (CloudVMIError, ValueError, TypeError, OSError) as exc:
            outcome = ("error", str(exc))
            if isinstance(exc, OSError | QMPError | GDBStubError):
                self.registry.drop(first.vm)
            _error(context, grpc.StatusCode.FAILED_PRECONDITION, type(exc).__name__, str(exc))
        finally:
            idle.cancel()
            slot.release()
            self._outcome(intent, *outcome, args=counts)
            self.metrics.calls.labels("exec", outcome[0]).inc()

    def _payload(self, context, first, rest, expected: int) -> bytes:
        """The payload announced in the first message, read while no more than
        payload_idle seconds pass between two messages (a stalled upload is cut off).
        REST is None for a call of one message."""
        if expected > MAX_PAYLOAD:
            _error(context, grpc.StatusCode.INVALID_ARGUMENT, "ValueError",
                   f"payload of {expected} bytes over the {MAX_PAYLOAD}-byte limit")
        if rest is None:
            if len(first.data) != expected:
                _error(context, grpc.StatusCode.INVALID_ARGUMENT, "ValueError",
                       f"payload of {len(first.data)} bytes where {expected} were announced")
            return first.data
        parts, size = [first.data], len(first.data)
        idle = threading.Timer(self.config.payload_idle, context.cancel)
        idle.start()
        try:
            while size < expected:
                chunk = next(rest, None)
                if chunk is None:
                    break
                idle.cancel()
                parts.append(chunk.data)
                size += len(chunk.data)
                if size > expected:
                    break
                idle = threading.Timer(self.config.payload_idle, context.cancel)
                idle.start()
            extra = size == expected and next(rest, None) is not None  # the end, in time
        finally:
            idle.cancel()
        if size != expected or extra:
            _error(context, grpc.StatusCode.INVALID_ARGUMENT, "ValueError",
                   f"payload of {size} bytes where {expected} were announced")
        return b"".join(parts)


class _Refused(Exception):
    """What Read would end its call with, kept for the stream's answer."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        try:
            info = json.loads(details)
        except ValueError:
            info = {"type": "", "message": details}
        self.info = {"code": code.name, **info}


class _Answering:
    """The stream's context, as one read inside it sees it: a refusal ends that read, not
    the stream. The peer and its certificate are the stream's: taken once."""

    def __init__(self, context) -> None:
        self._context = context
        self._auth = context.auth_context()
        self._peer = context.peer()

    def auth_context(self):
        return self._auth

    def peer(self) -> str:
        return self._peer

    def abort(self, code: grpc.StatusCode, details: str):
        raise _Refused(code, details)

    def __getattr__(self, name: str):
        return getattr(self._context, name)


def _replies(result):
    """A result as the replies of a streamed answer: its JSON, then its bytes in chunks."""
    text, blobs = codec.encode(result)
    yield pb.Reply(json=text)
    for blob in blobs:
        view = memoryview(blob)
        for offset in range(0, len(view), CHUNK):
            yield pb.Reply(data=bytes(view[offset:offset + CHUNK]))


def _exec_request(context, text: str) -> tuple[list[str], str]:
    """The program's argv (for the audit record) and the channel mode."""
    try:
        request = json.loads(text or "{}")
        argv, mode = request.get("argv"), request.get("channel", "stop")
    except (ValueError, AttributeError):
        argv = mode = None
    if not isinstance(argv, list) or not argv or len(argv) > 4096 \
            or not all(isinstance(a, str) and len(a) <= 65536 for a in argv):
        _error(context, grpc.StatusCode.INVALID_ARGUMENT, "ValueError",
               "exec needs argv: a list of strings")
    if mode not in CHANNEL_MODES:
        _error(context, grpc.StatusCode.INVALID_ARGUMENT, "ValueError",
               f"channel must be one of {', '.join(CHANNEL_MODES)}")
    return argv, mode


def _exec_calls(message, max_bytes: int) -> list[GuestCall]:
    """One message's calls, checked before the guest sees them (the channel checks the
    names, argument kinds and buffer sizes again as it lays them out)."""
    expected = sum(codec.blob_sizes(message.args_json or "[]"))
    if expected > 2 * max_bytes or len(message.data) != expected:
        raise ValueError(f"{len(message.data)} bytes of call data where {expected} were "
                         "announced (or over the limit)")
    calls = codec.decode(message.args_json or "[]", message.data, list[GuestCall])
    if not isinstance(calls, list) or not all(isinstance(c, GuestCall) for c in calls):
        raise ValueError("a list of calls was expected")
    return calls


def _takes_stream(cap: capability.Capability) -> bool:
    """Whether one of CAP's parameters accepts a ByteStream (so its blob can be streamed)."""
    return any(p.type is ByteStream or ByteStream in typing.get_args(p.type)
               for p in cap.params)


def _dispatch(vm, cap: capability.Capability, args: dict, as_pid: int):
    """Call CAP on the VM's facade for its facet (the same path a local caller takes)."""
    if cap.facet == "linux":
        subject = vm.linux
    elif cap.facet == "guest":
        subject = vm.guest.as_process(as_pid) if as_pid else vm.guest
    else:
        subject = vm
    return getattr(subject, cap.name)(**args)


def build_server(config: AgentConfig, audit: AuditLog,
                 metrics: AgentMetrics | None = None) -> tuple[grpc.Server, int, Registry]:
    finders = [name for name, on in (("lab", config.lab), ("libvirt", config.libvirt)) if on]
    registry = Registry(finders, config.qmp_dirs, config.dumps, config.max_dumps,
                        config.dumps_attached)
    options = [("grpc.max_receive_message_length", config.max_message_bytes),
               ("grpc.max_send_message_length", config.max_message_bytes)]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=config.workers),
                         options=options, maximum_concurrent_rpcs=config.max_concurrent_rpcs)
    rpc.add_AgentServicer_to_server(AgentService(config, registry, audit, metrics), server)
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


def open_audit(config: AgentConfig) -> AuditLog:
    """The audit log as configured: MACed with a forward-secure key, and checkpointed with
    the agent's TLS key into its own sink (unless it runs without one: insecure)."""
    log = config.audit_log
    signer = None if config.insecure else config.key
    sink = None if signer is None else (config.audit_checkpoints or Path(f"{log}.checkpoints"))
    return AuditLog(log, key_file=config.audit_key,
                    initial_key_file=config.audit_initial_key or Path(f"{log}.key.initial"),
                    checkpoints=sink, signer=signer, redact_args=config.audit_redact_args)


def serve(config: AgentConfig, ready=None, log_tls_denials: bool = False) -> None:
    """Run until SIGTERM or SIGINT, then finish calls in flight (5 s) and detach from VMs."""
    if config.libvirt_uri:  # what the libvirt finder and monitor connect to, in this process
        from cloudvmi.control.libvirt import URI_ENV

        os.environ[URI_ENV] = config.libvirt_uri
    audit = open_audit(config)
    if log_tls_denials and not config.insecure:
        from cloudvmi.remote import tlslog

        tlslog.watch(lambda reason: audit.record("unauthenticated", "*", "tls-handshake", {},
                                                 "denied", reason))
    metrics = AgentMetrics()
    if config.metrics_listen:
        metrics.serve(config.metrics_listen)
    server, port, registry = build_server(config, audit, metrics)
    server.start()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    if ready:
        ready(port)
    stop.wait()
    server.stop(grace=5).wait()
    registry.close()
    audit.close()  # records pending denial counts and signs a last checkpoint
