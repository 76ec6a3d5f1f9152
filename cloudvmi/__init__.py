"""CloudVMI: writable, cross-node virtual machine introspection of QEMU/KVM guests."""

from cloudvmi.errors import CloudVMIError

__all__ = ["CloudVMIError", "attach"]


def attach(target: str, **kwargs):
    """Attach to a VM: a lab guest's name, a QMP socket path, or a memory dump file."""
    from cloudvmi.vm import attach as _attach

    return _attach(target, **kwargs)
