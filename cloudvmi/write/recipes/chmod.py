"""chmod: change a guest file's mode."""

from cloudvmi.capability import operation
from cloudvmi.write.recipes.common import GuestPath, one_call


@operation()
def chmod(ops, path: GuestPath, mode: int) -> None:
    """Change a guest file's mode."""
    one_call(ops, "fchmodat", f"chmod {path}", path, mode, 0)
