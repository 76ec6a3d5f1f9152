"""stat: a guest file's metadata."""

from cloudvmi.capability import operation
from cloudvmi.write.recipes.common import FileStat, stat_path


@operation()
def stat(ops, path: str, follow: bool = False) -> FileStat:
    """A guest file's metadata (of the link itself unless FOLLOW)."""
    with ops.session() as s:
        return stat_path(s, path, follow)
