"""Which paths a redirected program keeps on the host: its own binaries and libraries (what
the dynamic loader opens, locale and gconv data), the host's character devices that carry
no guest state, its own /proc/self entries, and the host-only PATH prefix through which its
shell finds programs. Every other path is the guest's."""

HOST_TAG = b"/.cloudvmi-host"  # PATH entries under it name host directories

_HOST_PREFIXES = (
    b"/usr/lib/locale/", b"/usr/share/locale/", b"/usr/lib/x86_64-linux-gnu/gconv/",
    b"/usr/lib64/gconv/", b"/usr/share/i18n/", b"/dev/fd/", b"/dev/pts/",
)
_HOST_EXACT = frozenset({
    b"/dev/null", b"/dev/zero", b"/dev/full", b"/dev/random", b"/dev/urandom", b"/dev/tty",
    b"/dev/stdin", b"/dev/stdout", b"/dev/stderr", b"/dev/ptmx", b"/etc/ld.so.cache",
    b"/etc/ld.so.preload", b"/usr/lib/locale/locale-archive", b"/proc/self",
    b"/proc/thread-self",
})
# The program's own process: its binary, maps, descriptors (not the guest helper's).
_SELF = (b"/proc/self/", b"/proc/thread-self/")
_SELF_HOST = frozenset({b"exe", b"maps", b"smaps", b"auxv", b"fd", b"fdinfo", b"stat",
                        b"statm", b"status", b"task", b"cmdline", b"environ", b"limits",
                        b"attr", b"comm", b"cwd", b"root", b"mem", b"pagemap", b"loginuid",
                        b"sessionid", b"oom_score_adj", b"coredump_filter"})


def untag(path: bytes) -> bytes | None:
    """The host path behind a HOST_TAG path, or None."""
    if path == HOST_TAG or path.startswith(HOST_TAG + b"/"):
        return path[len(HOST_TAG):] or b"/"
    return None


def is_host(path: bytes) -> bool:
    """Whether an absolute, normalized path is kept on the host."""
    if path in _HOST_EXACT or path.startswith(_HOST_PREFIXES):
        return True
    for prefix in _SELF:
        if path.startswith(prefix):
            return path[len(prefix):].split(b"/", 1)[0] in _SELF_HOST
    return False


def tag_path_variable(value: str) -> str:
    """PATH for the program: each directory behind the host tag."""
    tag = HOST_TAG.decode()
    return ":".join(tag + d if d.startswith("/") else d for d in value.split(":") if d)
