"""Per-kernel-build profiles (symbols relative to _text, where BTF sits), cached on disk.

A profile depends only on the kernel build, not on the boot: addresses are kept relative to
_text, so a warm attach only has to find where this boot put the kernel.
"""

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from cloudvmi.errors import ProfileError

KERNEL_SPACE = 0xFFFF_8000_0000_0000  # addresses below this are not slid kernel addresses
MEMORY = "memory"  # types_source of a kernel whose BTF was read from its own image


@dataclass
class Profile:
    banner: bytes  # linux_banner, which names the build
    banner_offset: int  # linux_banner - _text
    btf_offset: int  # __start_BTF - _text; -1 when the types came from outside the guest
    btf_size: int
    names: list[str]
    offsets: list[int]  # symbol address - _text, except for the absolute ones
    types: str
    absolute: list[int]  # indices of symbols that do not move with KASLR (per-CPU offsets)
    types_source: str = MEMORY  # or the file the types came from

    @classmethod
    def from_symbols(cls, banner: bytes, banner_offset: int, btf_offset: int, btf_size: int,
                     names: list[str], addresses: list[int], types: str,
                     text_virt: int, types_source: str = MEMORY) -> "Profile":
        absolute = [i for i, a in enumerate(addresses) if a < KERNEL_SPACE]
        fixed = set(absolute)
        offsets = [a if i in fixed else a - text_virt for i, a in enumerate(addresses)]
        return cls(banner, banner_offset, btf_offset, btf_size, names, offsets, types, absolute,
                   types_source)

    def addresses(self, text_virt: int) -> list[int]:
        """Symbol addresses for a boot whose _text is at TEXT_VIRT."""
        out = [text_virt + off for off in self.offsets]
        for i in self.absolute:
            out[i] = self.offsets[i]
        return out

    @property
    def key(self) -> str:
        return hashlib.sha256(self.banner).hexdigest()[:24]

    def to_json(self) -> dict:
        return {
            "banner": self.banner.decode("latin-1"), "banner_offset": self.banner_offset,
            "btf_offset": self.btf_offset, "btf_size": self.btf_size,
            "names": self.names, "offsets": self.offsets, "types": self.types,
            "absolute": self.absolute, "types_source": self.types_source,
        }

    @classmethod
    def from_json(cls, data: dict) -> "Profile":
        try:
            return cls(
                banner=data["banner"].encode("latin-1"), banner_offset=int(data["banner_offset"]),
                btf_offset=int(data["btf_offset"]), btf_size=int(data["btf_size"]),
                names=list(data["names"]), offsets=[int(x) for x in data["offsets"]],
                types=str(data["types"]), absolute=[int(x) for x in data["absolute"]],
                types_source=str(data.get("types_source", MEMORY)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ProfileError(f"corrupt cached profile: {exc}") from exc


class ProfileStore:
    """Profiles in a directory: <key>.json plus <key>.btf (the raw BTF blob)."""

    def __init__(self, directory: Path | None) -> None:
        self.directory = directory

    def load_all(self) -> list[tuple[Profile, Path]]:
        if self.directory is None or not self.directory.exists():
            return []
        out = []
        for path in sorted(self.directory.glob("*.json")):
            try:
                out.append((Profile.from_json(json.loads(path.read_text())),
                            path.with_suffix(".btf")))
            except (OSError, ValueError, ProfileError):
                continue
        return out

    def save(self, profile: Profile, btf_blob: bytes) -> None:
        if self.directory is None:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        base = self.directory / profile.key
        for suffix, data in ((".btf", btf_blob),
                             (".json", json.dumps(profile.to_json()).encode())):
            tmp = base.with_suffix(suffix + f".{os.getpid()}.tmp")
            tmp.write_bytes(data)
            tmp.rename(base.with_suffix(suffix))
