"""chown: change a guest file's owner (of a link itself, not its target)."""

from cloudvmi.capability import operation
from cloudvmi.write.recipes.common import GuestPath, one_call


@operation()
def chown(ops, path: GuestPath, uid: int, gid: int = -1) -> None:
    """Change a guest file's owner and group (-1 keeps one)."""
    one_call(ops, "fchownat", f"chown {path}", path, uid, gid,
             ops.injector.abi.AT_SYMLINK_NOFOLLOW)
