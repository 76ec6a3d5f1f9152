"""The user's CloudVMI settings: one TOML file ($CLOUDVMI_CONFIG, else
~/.config/cloudvmi/config.toml), read once; every key is optional."""

import functools
import os
import tomllib
from pathlib import Path
from typing import Any

from cloudvmi.errors import CloudVMIError


def config_path() -> Path:
    return Path(os.environ.get("CLOUDVMI_CONFIG")
                or Path.home() / ".config" / "cloudvmi" / "config.toml")


@functools.cache
def _load(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise CloudVMIError(f"cannot read settings {path}: {exc}") from exc


def setting(key: str, default: Any = None) -> Any:
    """A top-level key of the settings file (e.g. "symbols": a directory of kernel types)."""
    return _load(config_path()).get(key, default)
