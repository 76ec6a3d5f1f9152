"""Which module declares each capability, written to the cache after the registry's full
load, so that a command asking for one capability imports only that module.

The manifest holds only what a full load derived; it is used while its fingerprint still
holds: the same sys.path and $CLOUDVMI_PLUGINS, and unchanged modification times and sizes
of every declaring module, of their folders (a module added beside them) and of the sys.path
folders (a package installed with entry points of its own). Otherwise the registry loads in
full, as without a manifest, and the manifest is written anew.
"""

import json
import os
import sys
import threading
from collections.abc import Iterable
from typing import Any

FILE = "capabilities.json"
VERSION = 1
PLUGINS_ENV = "CLOUDVMI_PLUGINS"
_current: dict[str, Any] | None = None
_lock = threading.Lock()


def _stamp(path: str) -> list[int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_mtime_ns, st.st_size]


def _context() -> dict[str, Any]:
    return {"version": VERSION, "python": sys.implementation.cache_tag,
            "path": list(sys.path), "plugins": os.environ.get(PLUGINS_ENV, "")}


def _watched(files: Iterable[str]) -> list[str]:
    files = set(files)
    return sorted({*files, *(os.path.dirname(f) for f in files), *(p for p in sys.path if p)})


def _path():
    from cloudvmi.paths import cache_dir

    return cache_dir() / FILE


def current() -> dict[str, Any]:
    """The cached manifest ({"modules": {key: module}, "commands": {"FACET COMMAND": key}}),
    or {} when there is none or its fingerprint no longer holds. Read once per process."""
    global _current
    with _lock:
        if _current is None:
            _current = _read()
        return _current


def _read() -> dict[str, Any]:
    try:
        data = json.loads(_path().read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("context") != _context():
        return {}
    stamps = data.get("stamps")
    if not isinstance(stamps, dict) or any(
            _stamp(path) != stamp for path, stamp in stamps.items()):
        return {}
    modules, commands = data.get("modules"), data.get("commands")
    if not isinstance(modules, dict) or not isinstance(commands, dict):
        return {}
    return {"modules": modules, "commands": commands}


def save(capabilities: Iterable[Any]) -> None:
    """Record which module declares each of CAPABILITIES (after a full load); a cache, so a
    failure to write is ignored."""
    global _current
    capabilities = list(capabilities)
    modules = {c.key: c.fn.__module__ for c in capabilities}
    commands = {f"{c.facet} {c.command}": c.key for c in capabilities if c.cli}
    files = [getattr(sys.modules.get(m), "__file__", None) for m in set(modules.values())]
    stamps = {path: _stamp(path) for path in _watched(f for f in files if f)}
    fresh = {"modules": modules, "commands": commands}
    with _lock:
        if _current == fresh:
            return
        _current = fresh
    data = {"context": _context(), "stamps": stamps, **fresh}
    try:
        path = _path()
        tmp = path.with_name(f"{FILE}.{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_text(json.dumps(data))
        tmp.replace(path)
    except OSError:
        pass
