"""Facts about a running QEMU that QMP does not hand out directly."""

import socket
import struct

from cloudvmi.errors import CloudVMIError


def qemu_pid(qmp_socket: str) -> int:
    """The PID of the QEMU listening on a QMP socket, from the socket's peer credentials.

    connect() records the listener's credentials, so this works even while another client
    holds the monitor.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(2)
        sock.connect(qmp_socket)
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError as exc:
        raise CloudVMIError(f"cannot reach QMP socket {qmp_socket}: {exc}") from exc
    finally:
        sock.close()
    pid = struct.unpack("3i", creds)[0]
    if pid <= 0:
        raise CloudVMIError(f"no process behind QMP socket {qmp_socket}")
    return pid


def shared_ram_file(qmp) -> str | None:
    """The file backing guest RAM, when it is a shared memory-backend-file (fast mmap path)."""
    try:
        objects = qmp.execute("qom-list", path="/objects")
    except CloudVMIError:
        return None
    for obj in objects:
        if not obj.get("type", "").startswith("child<memory-backend-file"):
            continue
        path = f"/objects/{obj['name']}"
        try:
            if qmp.execute("qom-get", path=path, property="share"):
                return qmp.execute("qom-get", path=path, property="mem-path")
        except CloudVMIError:
            continue
    return None
