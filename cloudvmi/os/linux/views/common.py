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
