"""Render results as rich tables or JSON: every command takes --json. Guest strings are
hostile input: they are printed literally (no markup), control characters escaped."""

import dataclasses
import json
import re
import sys
from collections.abc import Iterable, Sequence
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

console = Console()
errors = Console(stderr=True)

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


CELL_LIMIT = 240  # characters a table cell shows; --json gives every byte


def literal(value: Any, limit: int | None = None) -> Text:
    """VALUE as text that the terminal shows as it is: no markup, no escape sequences;
    cut at LIMIT characters with a note of how much is left out."""
    s = "" if value is None else str(value)
    if limit is not None and len(s) > limit:
        s = f"{s[:limit]}… (+{len(s) - limit} characters)"
    s = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", s)
    s = s.encode("utf-8", "backslashreplace").decode("utf-8")  # lone surrogates from guests
    return Text(s)


def to_plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {k: to_plain(v) for k, v in dataclasses.asdict(value).items()}
    if isinstance(value, dict):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_plain(v) for v in value]
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    return value


def emit_json(value: Any) -> None:
    text = json.dumps(to_plain(value), indent=1, ensure_ascii=False)
    sys.stdout.write(text.encode("utf-8", "backslashreplace").decode("utf-8") + "\n")


def table(title: str, columns: Sequence[str], rows: Iterable[Sequence[Any]],
          caption: str | None = None, numeric: Iterable[str] = ()) -> None:
    numeric = set(numeric) | NUMERIC
    t = Table(title=literal(title), caption=literal(caption) if caption else None,
              header_style="bold", expand=False)
    for col in columns:
        t.add_column(col, overflow="fold", justify="right" if col in numeric else "left")
    for row in rows:
        t.add_row(*(literal(v, CELL_LIMIT) for v in row))
    console.print(t)


def error(message: Any) -> None:
    errors.print(Text("error: ", style="red") + literal(message))


NUMERIC = {"PID", "TID", "TGID", "PPID", "UID", "GID", "SIZE", "REFS", "THR", "START"}
