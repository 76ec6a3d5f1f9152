"""Render results as tables or JSON: every command takes --json.

Guest strings are hostile input: they are printed literally (never markup), control characters
escaped. Tables are laid out like `ps`: a row never wraps; when a table is wider than the
terminal, its widest free-text columns (command lines, paths, ...) are cut with an ellipsis,
and identifier columns (PIDs, addresses, numbers) never are. `--wide` prints every field whole.

rich is imported on first use of a table, a line or the consoles (`output.console`,
`output.errors`): `--json` output never needs it.
"""

import dataclasses
import json
import os
import re
import sys
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from rich.console import Console
    from rich.text import Text

_consoles: dict[str, "Console"] = {}


def _console(name: str) -> "Console":
    """The console NAME ("console": stdout, "errors": stderr), made on first use."""
    made = _consoles.get(name)
    if made is None:
        from rich.console import Console

        made = _consoles.setdefault(name, Console(highlight=False, width=1 << 20)
                                    if name == "console"  # every print gives its own width
                                    else Console(stderr=True, highlight=False))
    return made


def __getattr__(name: str) -> Any:
    """`output.console` and `output.errors`, made when first asked for."""
    if name in ("console", "errors"):
        return _console(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_JSON_CONTROL = re.compile(r"[\x7f-\x9f]")  # json.dumps escapes the C0 ones itself
_IDENTIFIER = re.compile(r"[-+0-9a-fA-FxX:.,]*")  # numbers, hex addresses, dev, MAC
NUMERIC = {"PID", "TID", "TGID", "PPID", "UID", "GID", "SIZE", "REFS", "THR", "START"}
NARROWEST = 4  # a free-text column is not cut below its header, nor below this
GAP = 2  # spaces between two columns
NOT_A_TTY_WIDTH = 80


@dataclasses.dataclass
class Settings:
    wide: bool = False  # --wide: no field is cut


settings = Settings()


def set_wide(ctx: click.Context | None = None, param: Any = None, value: bool = True) -> None:
    """Click callback of --wide (global or per command): a flag set anywhere stays set."""
    if value:
        settings.wide = True


wide_option = click.option("--wide", "-w", is_flag=True, expose_value=False, is_eager=True,
                           callback=set_wide,
                           help="Print every field whole (tables are cut to the terminal).")


def width() -> int:
    """Columns to fit: $COLUMNS, else the terminal's, else 80 when stdout is not a terminal."""
    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit() and int(columns) > 0:
        return int(columns)
    try:
        if sys.stdout.isatty():
            return os.get_terminal_size(sys.stdout.fileno()).columns
    except (AttributeError, ValueError, OSError):
        pass
    return NOT_A_TTY_WIDTH


def escape(value: Any) -> str:
    """VALUE as a string that shows as it is: control characters as \\xNN, lone surrogates
    (undecodable guest bytes) as backslash escapes."""
    s = "" if value is None else str(value)
    s = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", s)
    return s.encode("utf-8", "backslashreplace").decode("utf-8")


def literal(value: Any, limit: int | None = None, style: str = "") -> "Text":
    """VALUE as text that the terminal shows as it is: no markup, no escape sequences;
    cut at LIMIT characters with a note of how much is left out."""
    from rich.text import Text

    s = "" if value is None else str(value)
    if limit is not None and len(s) > limit:
        s = f"{s[:limit]}… (+{len(s) - limit} characters)"
    return Text(escape(s), style=style)


def line(*parts: Any) -> "Text":
    """One line of output from PARTS: strings are literal, Text keeps its style."""
    from rich.text import Text

    out = Text()
    for part in parts:
        out.append(part if isinstance(part, Text) else literal(part))
    return out


def say(*parts: Any, err: bool = False) -> None:
    """Print one line (see `line`), never wrapped by us: the terminal may fold it."""
    _console("errors" if err else "console").print(line(*parts), soft_wrap=True)


_FIELDS: dict[type, tuple[str, ...]] = {}


def _field_names(cls: type) -> tuple[str, ...]:
    names = _FIELDS.get(cls)
    if names is None:
        names = _FIELDS[cls] = tuple(f.name for f in dataclasses.fields(cls))
    return names


def to_plain(value: Any) -> Any:
    """VALUE as JSON-able data: dataclasses as dicts of their fields, walked once (no copy
    first, as dataclasses.asdict makes)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {k: to_plain(getattr(value, k)) for k in _field_names(type(value))}
    if isinstance(value, dict):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_plain(v) for v in value]
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    return value


def emit_json(value: Any) -> None:
    """VALUE as JSON on stdout: every byte of it (no cut), with C1 controls escaped too."""
    text = json.dumps(to_plain(value), indent=1, ensure_ascii=False)
    text = _JSON_CONTROL.sub(lambda m: f"\\u{ord(m.group()):04x}", text)
    sys.stdout.write(text.encode("utf-8", "backslashreplace").decode("utf-8") + "\n")


def fit(natural: Sequence[int], fixed: Sequence[bool], floors: Sequence[int],
        available: int) -> list[int]:
    """Column widths within AVAILABLE cells: the widest free columns are cut first, to a common
    cap, none below its floor; fixed columns keep their NATURAL width."""
    widths = list(natural)
    if sum(widths) <= available:
        return widths
    free = [i for i, f in enumerate(fixed) if not f]
    budget = available - sum(w for i, w in enumerate(widths) if fixed[i])

    def used(cap: int) -> int:
        return sum(max(floors[i], min(natural[i], cap)) for i in free)

    low, high = 0, max((natural[i] for i in free), default=0)
    while low < high:  # the largest cap that fits
        mid = (low + high + 1) // 2
        low, high = (mid, high) if used(mid) <= budget else (low, mid - 1)
    for i in free:
        widths[i] = max(floors[i], min(natural[i], low))
    spare = budget - used(low)
    for i in sorted(free, key=lambda i: -natural[i]):  # what the cap left, to the widest
        if spare <= 0:
            break
        if widths[i] < natural[i] and widths[i] >= low:
            widths[i] += 1
            spare -= 1
    return widths


def _tightest(natural: list[int], fixed: list[bool], headers: list[int],
              total: int) -> tuple[int, list[int]]:
    """The gap between columns and the floors of free columns: two spaces and whole
    headers if that can fit TOTAL, else one space, else headers cut too."""
    tries = []
    for gap, floor_of in ((GAP, lambda n, h: min(n, max(NARROWEST, h))),
                          (1, lambda n, h: min(n, max(NARROWEST, h))),
                          (1, lambda n, h: min(n, NARROWEST))):
        floors = [floor_of(n, h) for n, h in zip(natural, headers, strict=True)]
        tries.append((gap, floors))
        least = sum(n if f else fl for n, f, fl in zip(natural, fixed, floors, strict=True))
        if least + gap * (len(natural) - 1) <= total:
            break
    return tries[-1]


def _fixed(header: str, cells: list["Text"], numeric: set[str]) -> bool:
    return header in numeric or all(_IDENTIFIER.fullmatch(c.plain) for c in cells)


def table(title: str, columns: Sequence[str], rows: Iterable[Sequence[Any]],
          caption: str | None = None, numeric: Iterable[str] = ()) -> None:
    """A titled table of ROWS; every cell literal. Fits the terminal unless --wide."""
    from rich.cells import cell_len
    from rich.table import Table

    numeric = set(numeric) | NUMERIC
    cells = [[literal(v) for v in row] for row in rows]
    by_column = [[row[i] for row in cells] for i in range(len(columns))]
    natural = [max([cell_len(h), *(c.cell_len for c in col)]) for h, col in zip(
        columns, by_column, strict=True)]
    total = width()
    gap = GAP
    if settings.wide:
        widths = natural
    else:
        fixed = [_fixed(h, col, numeric) for h, col in zip(columns, by_column, strict=True)]
        gap, floors = _tightest(natural, fixed, [cell_len(h) for h in columns], total)
        widths = fit(natural, fixed, floors, total - gap * (len(columns) - 1))
    t = Table(box=None, padding=(0, gap, 0, 0), pad_edge=False, show_edge=False,
              header_style="bold", expand=False)
    for i, col in enumerate(columns):
        t.add_column(col, justify="right" if col in numeric else "left", no_wrap=True,
                     overflow="ellipsis", width=widths[i], min_width=widths[i])
    for row in cells:
        t.add_row(*row)
    line_width = sum(widths) + gap * (len(columns) - 1)
    _heading(title, "bold", total, line_width)
    _console("console").print(t, width=max(line_width, 1), crop=False, soft_wrap=False)
    if caption:
        _heading(caption, "dim", total, line_width)


def _heading(text: str, style: str, total: int, line_width: int) -> None:
    out = literal(text, style=style)
    out.no_wrap = True
    out.overflow = "ellipsis"
    cut = None if settings.wide else total
    _console("console").print(out, width=cut or max(line_width, out.cell_len),
                              soft_wrap=cut is None)


def error(message: Any) -> None:
    """`error: MESSAGE` on stderr, on one line (newlines in MESSAGE are escaped)."""
    from rich.text import Text

    say(Text("error: ", style="red"), escape(message), err=True)
