"""Views and operation results to JSON and back, so a remote VM returns the very dataclasses
a local one does."""

import dataclasses
import json
from typing import Any

from cloudvmi.os.linux.views.common import ViewResult
from cloudvmi.os.linux.views.info import KernelInfo
from cloudvmi.os.linux.views.modules import Module
from cloudvmi.os.linux.views.processes import Process, Thread
from cloudvmi.write.operations import DirEntry, FileStat

VIEW_ITEMS = {"processes": Process, "threads": Thread, "modules": Module}


def dumps(value: Any) -> str:
    return json.dumps(_plain(value), ensure_ascii=False, separators=(",", ":"))


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, bytes):
        return {"__bytes__": value.hex()}
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _unbytes(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"__bytes__"}:
            return bytes.fromhex(value["__bytes__"])
        return {k: _unbytes(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_unbytes(v) for v in value]
    return value


def loads(text: str) -> Any:
    return _unbytes(json.loads(text))


def view_from_json(view: str, text: str):
    data = loads(text)
    if view == "info":
        return KernelInfo(**data)
    cls = VIEW_ITEMS[view]
    return ViewResult(items=[cls(**item) for item in data["items"]], partial=data["partial"])


RESULT_TYPES = {"stat": FileStat, "listdir": DirEntry}


def result_from_json(op: str, text: str) -> Any:
    data = loads(text)
    cls = RESULT_TYPES.get(op)
    if cls is None:
        return tuple(data) if op == "run" else data
    if isinstance(data, list):
        return [cls(**d) for d in data]
    return cls(**data)
