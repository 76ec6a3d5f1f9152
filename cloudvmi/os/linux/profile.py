"""Per-kernel-build profiles (symbols relative to _text, where BTF sits), cached on disk.

A profile depends only on the kernel build, not on the boot: addresses are kept relative to
_text, so a warm attach only has to find where this boot put the kernel.

Each format version has a folder of its own (v3/), so finding the profile of a boot decodes
only the small identifying files of this version, never an older format's (version 1 kept
everything in one JSON file of 8 MB). Profiles of version 2 (beside v3/) are still read, and
written again as version 3.
"""

import bisect
import json
import os
import threading
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import chain, islice, repeat
from operator import add, sub
from pathlib import Path
from typing import TYPE_CHECKING

from cloudvmi.errors import ProfileError
from cloudvmi.os.linux.kallsyms import Kallsyms
from cloudvmi.os.linux.kallsyms_names import NameTables

if TYPE_CHECKING:
    from cloudvmi.os.linux.btf import BTF

KERNEL_SPACE = 0xFFFF_8000_0000_0000  # addresses below this are not slid kernel addresses
_PENDING: dict[Path, list[threading.Thread]] = {}  # profiles being written, by store
_LOCK = threading.Lock()
VERSION = 3  # of the cached format: 2 keeps kallsyms' names compressed, 3 adds the BTF index
READABLE = (2, 3)  # the symbol tables of 2 and 3 are packed alike
LEGACY_HEAD = b'{"version": 2,'  # how a version-2 identifying file starts (json.dumps order)
MEMORY = "memory"  # types_source of a kernel whose BTF was read from its own image


@dataclass
class Profile:
    banner: bytes  # linux_banner, which names the build
    banner_offset: int  # linux_banner - _text
    btf_offset: int  # __start_BTF - _text; -1 when the types came from outside the guest
    btf_size: int
    names: NameTables  # kallsyms' names, kept compressed as the kernel keeps them
    offsets: Sequence[int]  # symbol address - _text, except for the absolute ones
    absolute: int  # how many symbols, first in the table, do not move with KASLR (per-CPU)
    types_source: str = MEMORY  # or the file the types came from
    _relative: Kallsyms | None = field(default=None, init=False, repr=False, compare=False)
    _placed: tuple[int, list[int]] | None = field(default=None, init=False, repr=False,
                                                  compare=False)

    @classmethod
    def from_symbols(cls, banner: bytes, banner_offset: int, btf_offset: int, btf_size: int,
                     symbols: Kallsyms, text_virt: int, types_source: str = MEMORY) -> "Profile":
        if symbols.tables is None:
            raise ProfileError("a profile keeps kallsyms' own tables")
        addresses = symbols.addresses
        absolute = bisect.bisect_left(addresses, KERNEL_SPACE)  # sorted: they come first
        offsets = addresses[:absolute] + list(map(sub, addresses[absolute:],
                                                  repeat(text_virt)))
        profile = cls(banner, banner_offset, btf_offset, btf_size, symbols.tables, offsets,
                      absolute, types_source)
        profile._placed = (text_virt, addresses)  # this boot's, if the page tables agree
        return profile

    def symbols(self, text_virt: int) -> Kallsyms:
        """The symbol table of a boot whose _text is at TEXT_VIRT."""
        if self._placed is not None and self._placed[0] == text_virt:
            return Kallsyms(self.names, self._placed[1])
        return Kallsyms(self.names, Placed(self.offsets, self.absolute, text_virt))

    def offset(self, name: str) -> int | None:
        """NAME's address relative to _text (absolute symbols: their value)."""
        if self._relative is None:
            self._relative = Kallsyms(self.names, self.offsets)
        return self._relative.get(name)

    @property
    def key(self) -> str:
        import hashlib  # OpenSSL's: not on a warm path that does not write

        return hashlib.sha256(self.banner).hexdigest()[:24]

    def pack(self) -> tuple[dict, bytes]:
        """(small JSON-able part, the symbol tables as bytes): the cache keeps the bytes in a
        file of their own, so finding the profile of a boot reads only the small parts."""
        names, names_payload = self.names.pack()
        offsets = array("q", self.offsets).tobytes()
        meta = {
            "version": VERSION, "banner": self.banner.decode("latin-1"),
            "banner_offset": self.banner_offset, "btf_offset": self.btf_offset,
            "btf_size": self.btf_size, "names": names, "offsets": len(offsets),
            "absolute": self.absolute, "types_source": self.types_source,
        }
        return meta, offsets + names_payload

    @classmethod
    def unpack(cls, meta: dict, payload: bytes) -> "Profile":
        try:
            if meta.get("version") not in READABLE:
                raise ProfileError("cached profile of another format")
            size = int(meta["offsets"])
            offsets = array("q")
            offsets.frombytes(payload[:size])
            names = NameTables.unpack(meta["names"], payload[size:])
            if len(offsets) != len(names):
                raise ProfileError("corrupt cached profile: offsets and names differ")
            if not 0 <= int(meta["absolute"]) <= len(offsets):
                raise ProfileError("corrupt cached profile: absolute symbols out of range")
            return cls(
                banner=meta["banner"].encode("latin-1"), banner_offset=int(meta["banner_offset"]),
                btf_offset=int(meta["btf_offset"]), btf_size=int(meta["btf_size"]),
                names=names, offsets=offsets, absolute=int(meta["absolute"]),
                types_source=str(meta.get("types_source", MEMORY)),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ProfileError(f"corrupt cached profile: {exc}") from exc

    def to_json(self) -> dict:
        """Self-contained (for an agent's client)."""
        import base64

        meta, payload = self.pack()
        return {**meta, "payload": base64.b64encode(payload).decode()}

    @classmethod
    def from_json(cls, data: dict) -> "Profile":
        import base64

        try:
            payload = base64.b64decode(data["payload"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ProfileError(f"corrupt profile: {exc}") from exc
        return cls.unpack(data, payload)


class Placed(Sequence[int]):
    """One boot's symbol addresses, each computed when read: the profile's offset from
    _text plus where this boot put _text (the absolute symbols as they are). A warm attach
    reads tens of the 150,000, by binary search and by index: placing them all up front was
    a tenth of a warm `cloudvmi ps`. Iterating (a full name index) stays at C speed."""

    __slots__ = ("_offsets", "_absolute", "_text")

    def __init__(self, offsets: Sequence[int], absolute: int, text: int) -> None:
        self._offsets, self._absolute, self._text = offsets, absolute, text

    def __len__(self) -> int:
        return len(self._offsets)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self._offsets)))]
        value = self._offsets[i]
        if i < 0:
            i += len(self._offsets)
        return value if i < self._absolute else value + self._text

    def __iter__(self):
        k = self._absolute
        return chain(islice(self._offsets, k),
                     map(add, islice(self._offsets, k, None), repeat(self._text)))

    def __reversed__(self):
        return reversed(list(self))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sequence) and list(self) == list(other)

    __hash__ = None  # type: ignore[assignment]


class ProfileStore:
    """Profiles in a directory: v3/<key>.json (what identifies the build), <key>.sym (the
    symbol tables), <key>.btf (the raw BTF blob) and <key>.idx (the BTF's type index, so
    that a warm attach makes no pass over the types)."""

    def __init__(self, directory: Path | None) -> None:
        self.directory = directory
        self.current = None if directory is None else directory / f"v{VERSION}"

    def candidates(self) -> list[tuple[dict, Path]]:
        """(identifying part, path without suffix) of every cached profile: this version's
        first, then those of version 2."""
        self.flush()
        if self.directory is None or not self.directory.exists():
            return []
        out = self._read_ids(self.current, VERSION) if self.current.exists() else []
        return out + self._read_ids(self.directory, 2, LEGACY_HEAD)

    @staticmethod
    def _read_ids(folder: Path, version: int, head: bytes = b"") -> list[tuple[dict, Path]]:
        out = []
        for path in sorted(folder.glob("*.json")):
            try:
                with path.open("rb") as f:
                    if head and f.read(len(head)) != head:
                        continue  # another version's: not decoded
                    f.seek(0)
                    meta = json.loads(f.read())
                if isinstance(meta, dict) and meta.get("version") == version:
                    out.append((meta, path.with_suffix("")))
            except (OSError, ValueError):
                continue
        return out

    def load(self, meta: dict, base: Path) -> tuple[Profile, bytes, bytes | None]:
        """The profile, its BTF blob and its BTF index (None: not cached); ProfileError or
        OSError if they do not load."""
        profile = Profile.unpack(meta, base.with_suffix(".sym").read_bytes())
        blob = base.with_suffix(".btf").read_bytes()
        try:
            index = base.with_suffix(".idx").read_bytes()
        except OSError:
            index = None
        return profile, blob, index

    def save(self, profile: Profile, btf_blob: bytes, btf: "BTF | None" = None) -> None:
        """Write the profile in the background: the files (7 MB for a 7.x kernel) are not
        on the path to the first result. The next look at this store waits for them, and the
        interpreter does at exit; each file lands whole (written aside, then renamed). BTF
        (parsed from BTF_BLOB) gives the type index to keep beside it."""
        if self.current is None:
            return
        thread = threading.Thread(target=self._write, args=(self.current / profile.key,
                                                            profile, btf_blob, btf),
                                  name="cloudvmi-profile-save")
        with _LOCK:
            _PENDING.setdefault(self.directory, []).append(thread)
        thread.start()

    def flush(self) -> None:
        """Wait for the profiles this process is still writing to this store."""
        with _LOCK:
            threads = _PENDING.pop(self.directory, [])
        for thread in threads:
            thread.join()

    @staticmethod
    def _write(base: Path, profile: Profile, btf_blob: bytes, btf: "BTF | None") -> None:
        meta, payload = profile.pack()
        files = [(".btf", btf_blob), (".sym", payload)]
        if btf is not None:
            files.append((".idx", btf.index_bytes()))
        files.append((".json", json.dumps(meta).encode()))  # the json last: it marks it whole
        try:
            base.parent.mkdir(parents=True, exist_ok=True)
            for suffix, data in files:
                tmp = base.with_suffix(suffix + f".{os.getpid()}.{threading.get_ident()}.tmp")
                tmp.write_bytes(data)
                tmp.rename(base.with_suffix(suffix))
        except (OSError, ProfileError):
            pass  # a cache: the next attach is cold again
