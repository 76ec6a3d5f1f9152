"""Render view results as rich tables or JSON: every command takes --json."""

import dataclasses
import json
import sys
from collections.abc import Iterable, Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

console = Console()
errors = Console(stderr=True)


def to_plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {k: to_plain(v) for k, v in dataclasses.asdict(value).items()}
    if isinstance(value, dict):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_plain(v) for v in value]
    return value


def emit_json(value: Any) -> None:
    json.dump(to_plain(value), sys.stdout, indent=1, ensure_ascii=False)
    sys.stdout.write("\n")


def table(title: str, columns: Sequence[str], rows: Iterable[Sequence[Any]],
          caption: str | None = None) -> None:
    t = Table(title=title, caption=caption, header_style="bold", expand=False)
    for col in columns:
        t.add_column(col, overflow="fold", justify="right" if col in NUMERIC else "left")
    for row in rows:
        t.add_row(*("" if v is None else str(v) for v in row))
    console.print(t)


NUMERIC = {"PID", "TID", "TGID", "PPID", "UID", "GID", "SIZE", "REFS", "THR", "START"}
