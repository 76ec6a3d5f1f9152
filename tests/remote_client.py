"""A CloudVMI client run inside the client's network namespace by the cross-node tests.

Usage: remote_client.py < STEPS_JSON   (the inventory comes from $CLOUDVMI_INVENTORY)
Prints one JSON object: a result or an error for each step.
"""

import hashlib
import json
import sys
import threading
import time

from cloudvmi.remote.client import PermissionDenied
from cloudvmi.remote.inventory import load, open_target


def step(s: dict):
    do = s["do"]
    if do == "nocert":  # TLS that trusts the agent's CA but presents no certificate
        import grpc

        from cloudvmi.remote.client import _raise
        from cloudvmi.remote.proto import cloudvmi_pb2 as pb
        from cloudvmi.remote.proto import cloudvmi_pb2_grpc as rpc

        inv = load()
        creds = grpc.ssl_channel_credentials(root_certificates=inv.tls.ca.read_bytes())
        channel = grpc.secure_channel(inv.nodes[s["node"]].address, creds)
        try:
            return len(rpc.AgentStub(channel).ListVMs(pb.Empty(), timeout=10).vms)
        except grpc.RpcError as exc:
            _raise(exc, s["node"])
        finally:
            channel.close()
    if do == "vms":
        return {n: [v.name for v in vms] if isinstance(vms, list) else str(vms)
                for n, vms in load().fan_out(lambda node: node.vms()).items()}
    vm = open_target(s["vm"])
    try:
        if do == "ps":
            r = vm.linux.processes()
            return {"partial": r.partial, "items": [[p.pid, p.ppid, p.comm, p.cmdline]
                                                    for p in r.items]}
        if do == "modules":
            return sorted(m.name for m in vm.linux.modules().items)
        if do == "read_physical":
            start = time.perf_counter()
            data = vm.read_physical(s["address"], s["size"])
            return {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data),
                    "seconds": time.perf_counter() - start}
        if do == "write_file":
            vm.guest.write_file(s["path"], bytes.fromhex(s["hex"]))
            return True
        if do == "read_file":
            return vm.guest.read_file(s["path"]).hex()
        if do == "write_physical":
            vm.write_physical(s["address"], bytes.fromhex(s["hex"]))
            return True
        if do == "run":
            ops = vm.guest.as_process(s["as_pid"]) if s.get("as_pid") else vm.guest
            status, output = ops.run(s["argv"], timeout=s.get("timeout", 30))
            return [status, output.decode(errors="replace")]
        if do == "exec":
            r = vm.exec(s["argv"], timeout=s.get("timeout", 60),
                        channel=s.get("channel", "stop"))
            return [r.status, r.stdout.decode(errors="replace"),
                    r.stderr.decode(errors="replace"), r.resumes]
        if do == "concurrent_ps":
            return concurrent(s)
        raise ValueError(f"unknown step {do}")
    finally:
        vm.close()


def concurrent(s: dict) -> dict:
    """N clients at once, each with its own channel: every answer, for the caller to check."""
    answers, errors = [], []

    def one():
        try:
            vm = open_target(s["vm"])
            try:
                answers.append(sorted((p.pid, p.comm) for p in vm.linux.processes().items))
            finally:
                vm.close()
        except Exception as exc:  # collected and reported
            errors.append(repr(exc))

    threads = [threading.Thread(target=one) for _ in range(s["n"])]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return {"answers": answers, "errors": errors[:3]}


def main() -> None:
    out = []
    for s in json.loads(sys.stdin.read()):
        try:
            out.append({"ok": step(s)})
        except PermissionDenied as exc:
            out.append({"error": "denied", "message": str(exc)})
        except Exception as exc:
            out.append({"error": type(exc).__name__, "message": str(exc)})
    print(json.dumps(out))


if __name__ == "__main__":
    main()
