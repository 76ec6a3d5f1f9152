"""sysctl_get, sysctl_set: kernel settings through /proc/sys."""

from cloudvmi.capability import operation


def sysctl_path(key: str) -> str:
    if not key or ".." in key or key.startswith("/"):
        raise ValueError(f"bad sysctl key {key!r}")
    return "/proc/sys/" + key.replace(".", "/")


@operation()
def sysctl_get(ops, key: str) -> str:
    """Read a kernel setting (net.ipv4.ip_forward, kernel.hostname, ...)."""
    return ops.read_file(sysctl_path(key)).decode(errors="replace").strip()


@operation()
def sysctl_set(ops, key: str, value: str) -> None:
    """Change a kernel setting."""
    ops.write_file(sysctl_path(key), value.encode() + b"\n")
