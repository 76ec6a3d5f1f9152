"""`cloudvmi fim`: file integrity from outside, with restore.

The guest's files are read by GNU tar run through `exec`: tar reads them inside the guest
(its system calls redirected), and its archive arrives on the host's stdout. Nothing runs in
the guest but the system calls, and the archive holds content and metadata alike. A baseline
is a manifest (JSON: type, mode, owner, size, sha256, link target per path) plus a content
store beside it (FILE.d/, blobs named by their sha256). Restore writes an archive of what
differs back through tar run the same way (`tar -x` with owners and modes kept). Then it
removes what was added since the baseline.
"""

import datetime as dt
import hashlib
import io
import json
import tarfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath

from cloudvmi.errors import CloudVMIError

TAR_TYPES = {tarfile.REGTYPE: "file", tarfile.AREGTYPE: "file", tarfile.DIRTYPE: "dir",
             tarfile.SYMTYPE: "symlink", tarfile.LNKTYPE: "hardlink", tarfile.CHRTYPE: "char",
             tarfile.BLKTYPE: "block", tarfile.FIFOTYPE: "fifo"}
COMPARED = ("type", "mode", "uid", "gid", "size", "sha256", "link")
TIMEOUT = 3600.0
Progress = Callable[[int, int | None], None]
"""progress(files done, files in all; None while tar still reads them in the guest)."""


@dataclass
class Entry:
    type: str
    mode: int
    uid: int
    gid: int
    size: int
    sha256: str = ""
    link: str = ""


@dataclass
class Baseline:
    vm: str
    paths: list[str]
    taken: str
    files: dict[str, Entry] = field(default_factory=dict)

    def save(self, path: Path) -> None:
        data = {"vm": self.vm, "paths": self.paths, "taken": self.taken,
                "files": {p: asdict(e) for p, e in sorted(self.files.items())}}
        path.write_text(json.dumps(data, indent=1) + "\n")

    @classmethod
    def load(cls, path: Path) -> "Baseline":
        try:
            data = json.loads(path.read_text())
            return cls(data["vm"], data["paths"], data["taken"],
                       {p: Entry(**e) for p, e in data["files"].items()})
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CloudVMIError(f"cannot read baseline {path}: {exc}") from exc


@dataclass
class Change:
    path: str
    kind: str  # added, removed, changed
    fields: list[str] = field(default_factory=list)  # what changed
    before: Entry | None = None
    after: Entry | None = None


def store_of(baseline_path: Path) -> Path:
    return baseline_path.with_name(baseline_path.name + ".d")


def _absolute(paths: list[str]) -> list[str]:
    out = []
    for p in paths:
        if not p.startswith("/"):
            raise CloudVMIError(f"{p}: paths in the guest must be absolute")
        out.append(str(PurePosixPath(p)))
    return out


def _archive(vm, paths: list[str], channel: str = "stop") -> bytes:
    """A tar archive of PATHS as the guest has them (tar run through exec)."""
    rel = [p.lstrip("/") or "." for p in _absolute(paths)]
    r = vm.exec(["tar", "--numeric-owner", "-C", "/", "-cf", "-", "--", *rel], stdin=b"",
                timeout=TIMEOUT, channel=channel)
    if r.status not in (0, 1):  # 1: a file changed while it was read
        raise CloudVMIError(f"tar in the guest failed ({r.status}): "
                            f"{r.stderr.decode(errors='replace')[-500:]}")
    return r.stdout


def scan(vm, paths: list[str], store: Path | None = None, channel: str = "stop",
         progress: Progress | None = None) -> dict[str, Entry]:
    """Every file under PATHS with its metadata and hash; contents into STORE if given.
    CHANNEL "persistent" reads through a guest helper (faster for many small files)."""
    files: dict[str, Entry] = {}
    report = progress or (lambda done, total: None)
    report(0, None)
    with tarfile.open(fileobj=io.BytesIO(_archive(vm, paths, channel)), mode="r:") as tar:
        members = tar.getmembers()
        report(0, len(members))
        for done, member in enumerate(members, start=1):
            report(done - 1, len(members))
            path = "/" + member.name.rstrip("/")
            entry = Entry(TAR_TYPES.get(member.type, "other"), member.mode, member.uid,
                          member.gid, member.size if member.isfile() else 0,
                          link=member.linkname if (member.issym() or member.islnk()) else "")
            if member.islnk():
                entry.link = "/" + member.linkname
            if member.isfile():
                data = tar.extractfile(member).read()
                entry.sha256 = hashlib.sha256(data).hexdigest()
                if store is not None:
                    blob = store / entry.sha256[:2] / entry.sha256
                    if not blob.exists():
                        blob.parent.mkdir(parents=True, exist_ok=True)
                        blob.write_bytes(data)
            files[path] = entry
        report(len(members), len(members))
    return files


def baseline(vm, name: str, paths: list[str], out: Path, channel: str = "stop",
             progress: Progress | None = None) -> Baseline:
    store = store_of(out)
    store.mkdir(parents=True, exist_ok=True)
    b = Baseline(name, _absolute(paths), dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                 scan(vm, paths, store, channel, progress))
    b.save(out)
    return b


def compare(before: dict[str, Entry], after: dict[str, Entry]) -> list[Change]:
    changes = []
    for path in sorted(before.keys() | after.keys()):
        a, b = before.get(path), after.get(path)
        if a is None:
            changes.append(Change(path, "added", after=b))
        elif b is None:
            changes.append(Change(path, "removed", before=a))
        else:
            differ = [f for f in COMPARED if getattr(a, f) != getattr(b, f)]
            if differ:
                changes.append(Change(path, "changed", differ, a, b))
    return changes


def check(vm, baseline_path: Path, channel: str = "stop",
          progress: Progress | None = None) -> list[Change]:
    b = Baseline.load(baseline_path)
    return compare(b.files, scan(vm, b.paths, channel=channel, progress=progress))


def _under(path: str, roots: list[str]) -> bool:
    return not roots or any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots)


def restore(vm, baseline_path: Path, only: list[str] | None = None,
            channel: str = "stop", progress: Progress | None = None) -> list[Change]:
    """Put the guest back as the baseline says (under ONLY, if given): changed and removed
    files rewritten from the store with their modes and owners, added ones removed. The
    changes that were undone."""
    b = Baseline.load(baseline_path)
    roots = _absolute(only or [])
    changes = [c for c in compare(b.files, scan(vm, b.paths, channel=channel,
                                                 progress=progress))
               if _under(c.path, roots)]
    write = [c for c in changes if c.kind in ("changed", "removed")]
    if write:
        archive = _restoring_archive(b, store_of(baseline_path), [c.path for c in write])
        r = vm.exec(["tar", "--numeric-owner", "--same-owner", "--same-permissions",
                     "--overwrite", "-C", "/", "-xf", "-"], stdin=archive, timeout=TIMEOUT,
                    channel=channel)
        if r.status != 0:
            raise CloudVMIError(f"tar in the guest failed ({r.status}): "
                                f"{r.stderr.decode(errors='replace')[-500:]}")
    added = sorted((c for c in changes if c.kind == "added"), key=lambda c: c.path,
                   reverse=True)  # children before their directories
    for command, kinds in ((["rm", "-f", "--"], False), (["rmdir", "--"], True)):
        victims = [c.path for c in added if (c.after.type == "dir") == kinds]
        if victims:
            r = vm.exec([*command, *victims], timeout=TIMEOUT, channel=channel)
            if r.status != 0:
                raise CloudVMIError(f"removing added files failed: "
                                    f"{r.stderr.decode(errors='replace')[-500:]}")
    return changes


def _restoring_archive(b: Baseline, store: Path, paths: list[str]) -> bytes:
    """A tar archive of the baseline's PATHS (and the directories on their way, so a removed
    directory comes back with its mode)."""
    wanted: set[str] = set()
    for p in paths:
        wanted.add(p)
        for parent in PurePosixPath(p).parents:
            if str(parent) in b.files:
                wanted.add(str(parent))
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(wanted):
            e = b.files[path]
            info = tarfile.TarInfo(path.lstrip("/"))
            info.mode, info.uid, info.gid = e.mode, e.uid, e.gid
            data = None
            if e.type == "file":
                data = (store / e.sha256[:2] / e.sha256).read_bytes()
                info.size = len(data)
            elif e.type == "dir":
                info.type = tarfile.DIRTYPE
            elif e.type == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, e.link
            elif e.type == "hardlink":
                info.type, info.linkname = tarfile.LNKTYPE, e.link.lstrip("/")
            else:
                continue  # devices and fifos are not restored
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return out.getvalue()
