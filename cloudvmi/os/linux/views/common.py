"""Pieces every view shares: results that can be marked partial, bounded list walks."""

from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")

# Bounds on walks over guest structures (hostile input): far above any real guest.
MAX_TASKS = 1 << 17
MAX_MODULES = 1 << 13
MAX_PATH_DEPTH = 256
MAX_CMDLINE = 1 << 20


@dataclass
class ViewResult(Generic[T]):
    """A view's items; `partial` says why the list may be incomplete (a bad structure)."""

    items: list[T] = field(default_factory=list)
    partial: str | None = None

    def __iter__(self):
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)


class Problems:
    """What went wrong while a view walked hostile memory, for `ViewResult.partial`: the
    first SHOWN reasons named, the rest counted (with UNIQUE, a repeated reason once).
    Views' walk states inherit it: `walk.problem("...")`, then `walk.partial`."""

    def __init__(self, shown: int = 8, unique: bool = False) -> None:
        self.reasons: list[str] = []
        self.problem_count = 0
        self._shown = shown
        self._seen: set[str] | None = set() if unique else None

    def problem(self, reason: str) -> None:
        if self._seen is not None:
            if reason in self._seen:
                return
            self._seen.add(reason)
        self.problem_count += 1
        if len(self.reasons) < self._shown:
            self.reasons.append(reason)

    @property
    def partial(self) -> str | None:
        if not self.problem_count:
            return None
        more = self.problem_count - len(self.reasons)
        return "; ".join(self.reasons) + (f" (and {more} more)" if more else "")


class ListWalkError(Exception):
    """A kernel list did not lead back to its head: cycle, bad pointer or too long."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def list_nodes(read_u64, head: int, limit: int):
    """Yield each node address of the circular list at HEAD, bounded and cycle-checked.

    Raises ListWalkError (after yielding what it could) when the list is not a proper ring.
    """
    seen = {head}
    node = read_u64(head)
    count = 0
    while node != head:
        if node in seen:
            raise ListWalkError(f"list at {head:#x} loops back to {node:#x} without its head")
        if count >= limit:
            raise ListWalkError(f"list at {head:#x} has more than {limit} entries")
        seen.add(node)
        yield node
        count += 1
        try:
            node = read_u64(node)
        except Exception as exc:  # an unreadable next pointer
            raise ListWalkError(f"list entry {node:#x}: {exc}") from exc
