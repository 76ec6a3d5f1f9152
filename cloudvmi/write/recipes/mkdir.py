"""mkdir: create a guest directory."""

from cloudvmi.capability import operation
from cloudvmi.write.recipes.common import GuestPath, one_call


@operation()
def mkdir(ops, path: GuestPath, mode: int = 0o755) -> None:
    """Create a guest directory."""
    one_call(ops, "mkdirat", f"mkdir {path}", path, mode)
