"""The forward-secure MAC key of the audit chain, and the agent's key state file.

Record i is MACed with K_i; K_1 is random; K_(i+1) = SHA-256("...evolve" || K_i). The state
file holds only (seq, head, K_(seq+1)): the key of the *next* record. Once record i is on
disk, K_i is overwritten in the file and dropped from memory, so whoever reads the agent's
state later holds K_(n+1) and, SHA-256 being one-way, cannot compute any K_i that signed an
existing record. K_1 goes once to the auditor (the initial key file, to be moved off the
host); from it the auditor recomputes every key. SHA-256(".../chain" || K_1), the chain id,
is the public commitment to K_1 that signed checkpoints carry.

The state file has two fixed-size slots: a new state is written to the free slot and
fsync'd before the old slot is zeroed and fsync'd, so a crash leaves one valid state and
never two keys for long. Erasure is as good as overwriting a file is: a copy-on-write file
system, its journal or the device may keep old blocks, and CPython may leave transient
copies of a key in freed memory.
"""

import contextlib
import hashlib
import hmac
import json
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cloudvmi.remote.audit_record import GENESIS, AuditError, canonical, sha256

KEY_BYTES = 32
SLOT = 512
_EVOLVE = b"cloudvmi-audit/evolve\0"
_CHAIN = b"cloudvmi-audit/chain\0"
_MAC = b"cloudvmi-audit/mac\0"


def new_key() -> bytearray:
    return bytearray(secrets.token_bytes(KEY_BYTES))


def evolve(key: bytes | bytearray) -> bytearray:
    """The next key; the previous one cannot be computed back from it."""
    return bytearray(hashlib.sha256(_EVOLVE + bytes(key)).digest())


def wipe(key: bytearray) -> None:
    """Overwrite KEY in place (its bytes, not just the name)."""
    key[:] = bytes(len(key))


def chain_id(initial: bytes | bytearray) -> str:
    """The public commitment to K_1 that identifies the chain."""
    return sha256(_CHAIN + bytes(initial))


def mac(key: bytes | bytearray, body: bytes) -> str:
    return hmac.new(bytes(key), _MAC + body, "sha256").hexdigest()


def keys_from(initial: bytes | bytearray) -> Iterator[bytearray]:
    """K_1, K_2, ... for a verifier that holds K_1 (each yielded key is wiped after use)."""
    key = bytearray(initial)
    try:
        while True:
            yield key
            nxt = evolve(key)
            wipe(key)
            key = nxt
    finally:
        wipe(key)


def key_at(initial: bytes | bytearray, seq: int) -> bytearray:
    """K_seq, computed from K_1 (the auditor's way to check a key state)."""
    key = bytearray(initial)
    for _ in range(seq - 1):
        nxt = evolve(key)
        wipe(key)
        key = nxt
    return key


@dataclass
class KeyState:
    chain: str
    seq: int  # records MACed so far
    head: str  # hash of record seq (GENESIS at 0)
    line: str  # SHA-256 of record seq's line (GENESIS at 0): the next record's prev
    key: bytearray  # K_(seq+1)
    slot: int = 0

    def to_slot(self) -> bytes:
        body = {"v": 1, "chain": self.chain, "seq": self.seq, "head": self.head,
                "line": self.line, "key": self.key.hex()}
        data = canonical({**body, "check": sha256(canonical(body))})
        if len(data) >= SLOT:
            raise AuditError("audit key state does not fit its slot")
        return data + b" " * (SLOT - 1 - len(data)) + b"\n"

    @classmethod
    def from_slot(cls, data: bytes, slot: int) -> "KeyState | None":
        try:
            body = json.loads(data.rstrip(b" \n\0").decode("ascii") or "null")
        except (UnicodeDecodeError, ValueError):
            return None
        if not isinstance(body, dict) or set(body) != {"v", "chain", "seq", "head", "line",
                                                         "key", "check"}:
            return None
        check = body.pop("check")
        if body["v"] != 1 or sha256(canonical(body)) != check:
            return None
        try:
            key = bytearray.fromhex(body["key"])
        except (TypeError, ValueError):
            return None
        if type(body["seq"]) is not int or len(key) != KEY_BYTES or not all(
                isinstance(body[k], str) for k in ("chain", "head", "line")):
            return None
        return cls(body["chain"], body["seq"], body["head"], body["line"], key, slot)

    def advanced(self, head: str, line: str) -> "KeyState":
        """The state after record seq+1 (hash HEAD, line digest LINE) was written."""
        return KeyState(self.chain, self.seq + 1, head, line, evolve(self.key), 1 - self.slot)


def genesis(initial: bytes | bytearray) -> KeyState:
    return KeyState(chain_id(initial), 0, GENESIS, GENESIS, bytearray(initial), 0)


class KeyFile:
    """The agent's key state on disk: read, created once, advanced with erasure."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)

    def load(self, repair: bool = True) -> KeyState | None:
        """The newest valid state (None if there is no file); a stale older slot left by a
        crash is erased now (REPAIR: the agent; a verifier only reads)."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise AuditError(f"cannot read the audit key state {self.path}: {exc}") from exc
        states = [KeyState.from_slot(data[i * SLOT:(i + 1) * SLOT], i) for i in (0, 1)]
        valid = [s for s in states if s is not None]
        if not valid:
            raise AuditError(f"the audit key state {self.path} is corrupt: the chain's key is "
                             "lost, so the log cannot be continued")
        state = max(valid, key=lambda s: s.seq)
        for other in valid:
            if other is not state:
                if repair:
                    self._erase(1 - state.slot)
                wipe(other.key)
        return state

    def create(self, state: KeyState) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise AuditError(f"cannot create the audit key state {self.path}: {exc}") from exc
        try:
            _write_all(fd, state.to_slot() + bytes(SLOT), 0)
            os.fsync(fd)
        except OSError as exc:
            raise AuditError(f"cannot write the audit key state {self.path}: {exc}") from exc
        finally:
            os.close(fd)
        _sync_dir(self.path.parent)

    def store(self, old: KeyState, new: KeyState) -> None:
        """Write NEW to the free slot, then erase OLD's slot (and OLD's key in memory)."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CLOEXEC)
        except OSError as exc:
            raise AuditError(f"cannot open the audit key state {self.path}: {exc}") from exc
        try:
            _write_all(fd, new.to_slot(), new.slot * SLOT)
            os.fsync(fd)
            _write_all(fd, bytes(SLOT), old.slot * SLOT)
            os.fsync(fd)
        except OSError as exc:
            raise AuditError(f"cannot update the audit key state {self.path}: {exc}") from exc
        finally:
            os.close(fd)
            wipe(old.key)

    def _erase(self, slot: int) -> None:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CLOEXEC)
            try:
                _write_all(fd, bytes(SLOT), slot * SLOT)
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise AuditError(f"cannot erase an old key in {self.path}: {exc}") from exc


def write_initial(path: Path | str, initial: bytes | bytearray) -> None:
    """Hand K_1 to the auditor: a new file (never overwritten: an old one belongs to another
    chain and must not be lost)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o400)
    except FileExistsError as exc:
        raise AuditError(f"{path} exists: it is the initial key of an earlier chain; move it "
                         "to the auditor before starting a new chain") from exc
    except OSError as exc:
        raise AuditError(f"cannot write the initial audit key {path}: {exc}") from exc
    try:
        _write_all(fd, bytes(initial).hex().encode() + b"\n", 0)
        os.fsync(fd)
    finally:
        os.close(fd)


def read_initial(path: Path | str) -> bytearray:
    try:
        key = bytearray.fromhex(Path(path).read_text().strip())
    except (OSError, ValueError) as exc:
        raise AuditError(f"cannot read the initial audit key {path}: {exc}") from exc
    if len(key) != KEY_BYTES:
        raise AuditError(f"{path} does not hold a {KEY_BYTES}-byte key")
    return key


def _write_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


def _sync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
