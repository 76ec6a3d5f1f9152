"""CloudVMI: writable, cross-node virtual machine introspection of QEMU/KVM guests."""

from cloudvmi.errors import CloudVMIError

__all__ = ["CloudVMIError", "attach", "connect"]


def attach(target: str, **kwargs):
    """Attach to a VM: a lab guest's name, a QMP socket path, or a memory dump file."""
    from cloudvmi.vm import attach as _attach

    return _attach(target, **kwargs)


def connect(address: str, vm: str, tls=None, **kwargs):
    """A VM on another node, through its agent, with the same interface as a local one.

    `tls` is a cloudvmi.remote.client.TLS (CA, client cert and key); None only for an agent
    in insecure loopback mode."""
    from cloudvmi.remote.client import connect as _connect

    return _connect(address, vm, tls, **kwargs)
