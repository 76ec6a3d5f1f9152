"""How the CLI fails: every error is one `error: ...` line on stderr and a nonzero exit.

- a bad argument or option (click's usage errors): exit 2, with where to find help;
- what CloudVMI refuses on purpose (CloudVMIError), what the system refuses (OSError: a
  missing or unreadable file) and values refused by a check (ValueError): exit 1;
- anything else is a bug: `error: internal error: ...` and exit 70 (EX_SOFTWARE).
With --debug or CLOUDVMI_DEBUG=1 the traceback is printed too, for every one of them.
Ctrl-C ends with 130, and a closed pipe (`cloudvmi ps vm | head`) ends quietly.
"""

import os
import sys
import traceback
from collections.abc import Callable
from typing import Any

import click

from cloudvmi.cli.output import error
from cloudvmi.errors import CloudVMIError

EXPECTED = (CloudVMIError, OSError, ValueError)
INTERNAL = 70
_debug = False


def set_debug(on: bool, reset: bool = False) -> None:
    """--debug: a flag set anywhere stays set for this run."""
    global _debug
    _debug = bool(on) if reset else _debug or bool(on)


def debugging() -> bool:
    return _debug or os.environ.get("CLOUDVMI_DEBUG", "") not in ("", "0")


def describe(exc: BaseException) -> str:
    """EXC in one line: an OSError as `PATH: reason`, others as their message."""
    if isinstance(exc, OSError) and exc.strerror:
        where = f"{exc.filename}: " if exc.filename is not None else ""
        return f"{where}{exc.strerror}"
    return str(exc) or type(exc).__name__


def report(exc: BaseException, internal: bool = False) -> None:
    if debugging():
        traceback.print_exception(exc, file=sys.stderr)
    if internal:
        error(f"internal error: {type(exc).__name__}: {describe(exc)} (CLOUDVMI_DEBUG=1 "
              "shows where)")
    else:
        error(describe(exc))


def guarded(main: Callable[[], Any]) -> int:
    """Run click's MAIN (not standalone): its exit status, every failure reported."""
    try:
        result = main()
        return result if type(result) is int else 0
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.UsageError as exc:
        if debugging():
            traceback.print_exception(exc, file=sys.stderr)
        hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
        error(f"{exc.format_message().rstrip('.')}{hint}")
        return exc.exit_code
    except click.ClickException as exc:
        error(exc.format_message())
        return exc.exit_code
    except (KeyboardInterrupt, click.Abort):
        error("interrupted")
        return 130
    except BrokenPipeError:
        _quiet_stdout()
        return 141
    except EXPECTED as exc:
        report(exc)
        return 1
    except Exception as exc:  # a bug: say so in one line, never swallow it
        report(exc, internal=True)
        return INTERNAL


def _quiet_stdout() -> None:
    """After the reader went away, flushing stdout at exit must not raise again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
