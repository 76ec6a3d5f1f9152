"""Settings files read strictly (the agent's config, the client's inventory).

Every key has a declared type and every value must have it: a TOML boolean for a boolean
(`insecure = "false"` is an error, not plaintext), an integer within bounds for a number, a
list of the declared items for a list. Unknown keys are errors too: a misspelt security
setting must stop the program, not be ignored while a default weaker than intended applies.
Each error is one line naming the file, the key and what was expected.
"""

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cloudvmi.errors import CloudVMIError

_NAMES = {bool: "a boolean (true or false)", int: "an integer", str: "a string",
          list: "a list", dict: "a table"}
_ITEMS = {bool: "booleans", int: "integers", str: "strings", dict: "tables ([[...]])"}


@dataclass(frozen=True)
class Setting:
    kind: type  # bool, int, str, list or dict
    item: type | None = None  # a list's items
    required: bool = False
    low: int | None = None  # an int's least value; a string's (or item's) least length
    high: int | None = None  # an int's greatest value
    choices: tuple[str, ...] = ()  # the values a string (or a list's item) may take

    def describe(self) -> str:
        what = _NAMES[self.kind]
        if self.kind is list and self.item is not None:
            what = f"a list of {_ITEMS[self.item]}"
        if self.choices:
            what += f" from {', '.join(self.choices)}"
        if self.kind is int and self.low is not None and self.high is not None:
            what += f" from {self.low} to {self.high}"
        elif self.low:
            what += " (not empty)"
        return what


def _shown(value: Any) -> str:
    kind = {bool: "boolean", int: "integer", float: "float", str: "string", list: "list",
            dict: "table"}.get(type(value), type(value).__name__)
    text = repr(value)
    return f"the {kind} {text if len(text) <= 40 else text[:37] + '...'}"


def _fits(value: Any, kind: type, s: Setting) -> bool:
    if kind is int:
        return (isinstance(value, int) and not isinstance(value, bool)
                and (s.low is None or value >= s.low) and (s.high is None or value <= s.high))
    if not isinstance(value, kind):
        return False
    if kind is str:
        return len(value) >= (s.low or 0) and (not s.choices or value in s.choices)
    return True


def check(value: Any, s: Setting, what: str) -> None:
    """VALUE has the type (and bounds) S declares, or a CloudVMIError about WHAT."""
    if s.kind is list:
        ok = isinstance(value, list) and (
            s.item is None or all(_fits(v, s.item, s) for v in value))
    else:
        ok = _fits(value, s.kind, s)
    if not ok:
        raise CloudVMIError(f"{what} must be {s.describe()}, not {_shown(value)}")


def table(value: Any, settings: Mapping[str, Setting], where: str) -> dict[str, Any]:
    """A TOML table checked against SETTINGS: no unknown key, every required one present,
    each value of its declared type. WHERE names the table in errors."""
    if not isinstance(value, dict):
        raise CloudVMIError(f"{where} must be a table, not {_shown(value)}")
    for key in value:
        if key not in settings:
            raise CloudVMIError(f"{where}: unknown key {key!r} (known: "
                                f"{', '.join(sorted(settings))})")
    for key, s in settings.items():
        if key in value:
            check(value[key], s, f"{where}: {key}")
        elif s.required:
            raise CloudVMIError(f"{where}: {key} is required ({s.describe()})")
    return value


def tables(value: Any, settings: Mapping[str, Setting], where: str) -> list[dict[str, Any]]:
    """An array of tables ([[allow]], [[node]]), each checked with `table`."""
    if not isinstance(value, list):
        raise CloudVMIError(f"{where} must be an array of tables ([[...]]), not {_shown(value)}")
    return [table(v, settings, f"{where} #{i}") for i, v in enumerate(value, start=1)]


def host_port(address: str, what: str, empty_host: bool = False) -> tuple[str, int]:
    """HOST:PORT (an IPv6 host in brackets) split and checked; the port 0 to 65535."""
    host, sep, port = address.rpartition(":")
    host = host.removeprefix("[").removesuffix("]") if host.startswith("[") else host
    if not sep or not port.isdigit() or int(port) > 65535 or (not host and not empty_host):
        raise CloudVMIError(f"{what} must be HOST:PORT, not {address!r}")
    return host, int(port)


def is_loopback(host: str) -> bool:
    """Whether HOST names this machine only: a loopback address, or "localhost"."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
