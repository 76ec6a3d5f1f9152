"""remove: delete a guest file or empty directory."""

from cloudvmi.capability import operation
from cloudvmi.write.errors import check
from cloudvmi.write.recipes.common import GuestPath, guest_path, stat_path


@operation()
def remove(ops, path: GuestPath) -> None:
    """Delete a guest file or empty directory."""
    with ops.session() as s:
        st = stat_path(s, path)
        b = s.batch()
        i = b.add(s.abi.nr("unlinkat"), s.abi.AT_FDCWD, s.put(guest_path(path)),
                  s.abi.AT_REMOVEDIR if st.type == "dir" else 0)
        check(s.run(b)[i], f"remove {path}")
