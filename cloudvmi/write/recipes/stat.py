"""stat: a guest file's metadata."""

from cloudvmi.capability import operation
from cloudvmi.write.recipes.common import FileStat, GuestPath, stat_path


@operation()
def stat(ops, path: GuestPath, follow: bool = False) -> FileStat:
    """A guest file's metadata (of the link itself unless FOLLOW)."""
    with ops.session() as s:
        return stat_path(s, path, follow)
