"""Memory dump files an agent serves as read-only VMs (a forensics collection).

Only files the agent's configured globs match are served: a client names a dump by the name
listed here, never by a path, so it cannot make the agent open a file of its choosing. Each
name is the file's stem when that is a plain, unique name; otherwise (two files with one
stem, a stem with characters that would not survive `VM@NODE`, a stem another VM of the
node already has) the stem plus a digest of the file's path, which stays the same from one
listing to the next whatever else is added.
"""

import glob
import hashlib
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
KIND = "dump"


@dataclass(frozen=True)
class DumpFile:
    name: str  # the VM name clients use
    path: str  # as the glob matched it (a symlink stays itself: its own VM)
    size: int


def patterns(entries: list[Path]) -> list[str]:
    """Glob patterns from the configured entries: a directory stands for every file in it."""
    return [str(p / "*") if p.is_dir() else str(p) for p in entries]


def find(globs: list[str], limit: int, taken: frozenset[str] = frozenset()
         ) -> tuple[list[DumpFile], bool]:
    """The regular files the globs match (at most LIMIT, in path order), named; and whether
    more were there than LIMIT. TAKEN: names other VMs of the node already have."""
    paths: list[tuple[str, int]] = []
    seen: set[str] = set()
    more = False
    for pattern in globs:
        for path in sorted(glob.iglob(pattern)):
            if path in seen:
                continue
            try:
                st = os.stat(path)
            except OSError:
                continue
            if not stat.S_ISREG(st.st_mode) or st.st_size == 0:
                continue
            if len(paths) >= limit:
                more = True
                break
            seen.add(path)
            paths.append((path, st.st_size))
        if more:
            break
    stems: dict[str, int] = {}
    for path, _ in paths:
        stem = Path(path).stem
        stems[stem] = stems.get(stem, 0) + 1
    out, names = [], set(taken)
    for path, size in paths:
        stem = Path(path).stem
        unique = stems[stem] == 1 and stem not in taken
        name = stem if unique and SAFE_NAME.fullmatch(stem) else _hashed(stem, path)
        if name in names:  # a file literally named like another's hashed name: not served
            continue
        names.add(name)
        out.append(DumpFile(name, path, size))
    return out, more


def _hashed(stem: str, path: str) -> str:
    digest = hashlib.sha256(os.fsencode(path)).hexdigest()[:8]
    prefix = re.sub(r"[^A-Za-z0-9._-]", "_", stem)[:40].lstrip("._-") or "dump"
    return f"{prefix}-{digest}"


def still_there(path: str) -> bool:
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False
