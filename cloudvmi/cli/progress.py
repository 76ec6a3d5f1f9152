"""Progress for long work (file transfers, fleet commands, baselines): a rich progress bar on
stderr, shown only when stderr is a terminal and never with --json. The layers below know
nothing of it: they take a plain callback, `progress(done, total)` (total None: not known
yet), which `Progress.report` is."""

import contextlib
from collections.abc import Iterable, Iterator
from typing import Any

from rich import progress as bars
from rich.text import Text

from cloudvmi.cli.output import errors, escape


class Progress:
    """One task's bar: `with Progress("put /etc/motd", unit="bytes") as p: p.report(n, total)`.
    Does nothing when hidden (--json) or when stderr is not a terminal."""

    def __init__(self, description: str, hide: bool = False, unit: str = "") -> None:
        self.description = escape(description)  # guest paths and VM names: literal
        self.shown = not hide and errors.is_terminal
        self.unit = unit
        self._bar: bars.Progress | None = None
        self._task: Any = None

    def __enter__(self) -> "Progress":
        if self.shown:
            size = ([bars.DownloadColumn(), bars.TransferSpeedColumn()] if self.unit == "bytes"
                    else [bars.MofNCompleteColumn()])
            self._bar = bars.Progress(bars.SpinnerColumn(), bars.TextColumn("{task.description}",
                                                                          markup=False),
                                      bars.BarColumn(), *size, bars.TimeElapsedColumn(),
                                      console=errors, transient=True)
            self._bar.start()
            self._task = self._bar.add_task(self.description, total=None)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()

    def add(self, total: int | None) -> None:
        """Set (or change) how much work there is."""
        if self._bar is not None:
            self._bar.update(self._task, total=total)

    def report(self, done: int, total: int | None = None) -> None:
        """The callback lower layers call: DONE of TOTAL units."""
        if self._bar is not None:
            if total is not None:
                self._bar.update(self._task, total=total)
            self._bar.update(self._task, completed=done)

    def advance(self, step: int = 1) -> None:
        if self._bar is not None:
            self._bar.advance(self._task, step)

    def over(self, items: Iterable[Any], total: int | None) -> Iterator[Any]:
        """ITEMS, advancing the bar after each."""
        self.add(total)
        for item in items:
            yield item
            self.advance()


@contextlib.contextmanager
def status(text: str, hide: bool = False) -> Iterator[None]:
    """A spinner with TEXT on stderr while the block runs (a terminal only)."""
    if hide or not errors.is_terminal:
        yield
        return
    with errors.status(Text(escape(text))):
        yield
