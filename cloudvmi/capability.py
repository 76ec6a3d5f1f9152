"""Every view, guest operation and memory call declared once, beside its code.

A declaration names the capability, its typed parameters (from the function's signature),
its result type, the permission it needs and whether it needs a running VM. Everything that
serves a capability is derived from the declaration: the Python facades (`vm.linux.NAME`,
`vm.guest.NAME`, `vm.NAME`), the agent's dispatch and authorization, the remote client, the
codec and the CLI command. Adding a view is one module with one decorated function.

Declarations are collected from modules listed under the `cloudvmi.capabilities` entry point
(the built-in ones are listed in pyproject.toml) and in $CLOUDVMI_PLUGINS (comma-separated
module names), so a site can add views of its own without touching CloudVMI.

Importing every declaring module costs more than a whole `cloudvmi ps DUMP` should (the write
layer, the applications): after a full load, which module declares what is kept in the cache
(capabilities.json, manifest.py), so asking for one capability imports only its module while
none of those modules, their folders, sys.path or $CLOUDVMI_PLUGINS has changed.
"""

import importlib
import inspect
import os
import sys
import threading
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

FACETS = ("linux", "guest", "vm")  # vm.linux.NAME (views), vm.guest.NAME (operations), vm.NAME
PERMISSIONS = ("read", "write", "operate")
ENTRY_POINT_GROUP = "cloudvmi.capabilities"
PLUGINS_ENV = "CLOUDVMI_PLUGINS"


class Check:
    """A rule on a parameter's value, declared in its type (`Annotated[str, Rule(fn)]`) so
    that every caller applies it before the VM is touched: local facades, the remote client
    and the agent's argument check. A refused value raises ValueError."""

    def __call__(self, value: Any) -> None:
        raise NotImplementedError


@dataclass(frozen=True)
class Rule(Check):
    """FN(value) raises ValueError for a value it refuses."""

    fn: Callable[[Any], object]

    def __call__(self, value: Any) -> None:
        self.fn(value)


@dataclass(frozen=True)
class Range(Check):
    """A number with LOW <= value <= HIGH (NaN and infinities are outside)."""

    low: float
    high: float
    unit: str = ""

    def __call__(self, value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, int | float) \
                or not self.low <= value <= self.high:
            raise ValueError(f"{value!r} is not within {self.low:g}{self.unit} and "
                             f"{self.high:g}{self.unit}")


@dataclass(frozen=True)
class Param:
    name: str
    type: Any
    default: Any = inspect.Parameter.empty
    help: str = ""
    checks: tuple[Check, ...] = ()

    @property
    def required(self) -> bool:
        return self.default is inspect.Parameter.empty


@dataclass(frozen=True)
class Column:
    """One column of the CLI table: a header and the item attribute (or function) it shows."""

    header: str
    value: str | Callable[[Any], Any]
    numeric: bool = False

    def of(self, item: Any) -> Any:
        return self.value(item) if callable(self.value) else getattr(item, self.value)


@dataclass(frozen=True)
class Capability:
    facet: str
    name: str
    fn: Callable  # called as fn(subject, **arguments); subject: the kernel, GuestOps or VM
    permission: str
    live: bool  # needs a running VM (a dump cannot serve it)
    params: tuple[Param, ...]
    result: Any
    doc: str
    columns: tuple[Column, ...] = ()
    title: str = ""  # CLI table title; "{vm}" is the VM's name
    cli: bool = True  # a generic CLI command is made for it
    command: str = ""  # the CLI command's name, when it is not the capability's

    def __post_init__(self) -> None:
        if not self.command:
            object.__setattr__(self, "command", self.name.replace("_", "-"))

    @property
    def key(self) -> str:
        return f"{self.facet}.{self.name}"

    def param(self, name: str) -> Param:
        for p in self.params:
            if p.name == name:
                return p
        raise TypeError(f"{self.key} takes no argument {name!r}")

    def bind(self, args: tuple, kwargs: dict) -> dict[str, Any]:
        """Positional and keyword arguments as one checked dict of declared parameters."""
        if len(args) > len(self.params):
            raise TypeError(f"{self.key} takes at most {len(self.params)} arguments")
        out = dict(zip((p.name for p in self.params), args, strict=False))
        for name, value in kwargs.items():
            self.param(name)
            if name in out:
                raise TypeError(f"{self.key} got {name!r} twice")
            out[name] = value
        missing = [p.name for p in self.params if p.required and p.name not in out]
        if missing:
            raise TypeError(f"{self.key} needs {', '.join(missing)}")
        return out

    def check(self, args: dict[str, Any]) -> None:
        """Apply the declared checks (`Annotated[..., Check]`) to bound ARGS: a ValueError
        naming the capability and the parameter."""
        for name, value in args.items():
            for rule in self.param(name).checks:
                try:
                    rule(value)
                except ValueError as exc:
                    raise ValueError(f"{self.name}: {name}: {exc}") from None


_REGISTRY: dict[str, Capability] = {}
_loaded = False
_load_lock = threading.RLock()  # a module being imported may look capabilities up


def _declare(facet: str, fn: Callable, name: str | None, permission: str, live: bool,
             columns: Sequence[Column], title: str, cli: bool, helps: dict[str, str],
             command: str = ""):
    if facet not in FACETS or permission not in PERMISSIONS:
        raise ValueError(f"bad declaration of {fn.__name__}: {facet}/{permission}")
    hints = typing.get_type_hints(fn)
    extras = typing.get_type_hints(fn, include_extras=True)
    sig = inspect.signature(fn)
    params = tuple(Param(p.name, hints.get(p.name, Any), p.default, helps.get(p.name, ""),
                         _checks(extras.get(p.name)))
                   for p in list(sig.parameters.values())[1:]
                   if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))
    cap = Capability(facet=facet, name=name or fn.__name__.strip("_"), fn=fn,
                     permission=permission, live=live, params=params,
                     result=hints.get("return", Any),
                     doc=inspect.cleandoc(fn.__doc__ or "").split("\n\n")[0],
                     columns=tuple(columns), title=title, cli=cli, command=command)
    old = _REGISTRY.get(cap.key)
    where = (fn.__module__, fn.__qualname__)
    if old is not None and (old.fn.__module__, old.fn.__qualname__) != where:
        # the same module imported again (a reload) replaces its own declaration
        raise ValueError(f"{cap.key} is declared twice: {old.fn.__module__} and "
                         f"{fn.__module__}")
    _REGISTRY[cap.key] = cap
    return cap


def _checks(hint: Any) -> tuple[Check, ...]:
    """The Check objects of an `Annotated[T, ...]` hint (none for a plain one)."""
    return tuple(m for m in getattr(hint, "__metadata__", ()) if isinstance(m, Check))


def view(name: str | None = None, *, columns: Sequence[Column] = (), title: str = "",
         live: bool = False, cli: bool = True, command: str = "", **helps: str):
    """Declare a read-only view of the guest: `def NAME(kernel, **params) -> result`.
    COLUMNS and TITLE make its CLI table; COMMAND names its CLI command (default NAME)."""
    def deco(fn):
        _declare("linux", fn, name, "read", live, columns, title, cli, helps, command)
        return fn
    return deco


def operation(name: str | None = None, *, permission: str = "operate", columns=(),
              title: str = "", cli: bool = False, **helps: str):
    """Declare a guest operation, run by system calls in the guest:
    `def NAME(ops, **params)` where `ops` is the VM's GuestOps."""
    def deco(fn):
        _declare("guest", fn, name, permission, True, columns, title, cli, helps)
        return fn
    return deco


def vm_call(name: str | None = None, *, permission: str = "read", live: bool = False,
            **helps: str):
    """Declare a call on the VM itself (memory, control): `def NAME(self, **params)`."""
    def deco(fn):
        _declare("vm", fn, name, permission, live, (), "", False, helps)
        return fn
    return deco


def load() -> None:
    """Import every module that declares capabilities: the entry points once, and the
    modules named in $CLOUDVMI_PLUGINS whenever it names one not imported yet. Threads that
    ask at once wait for the first to finish (an agent serves calls concurrently)."""
    global _loaded
    with _load_lock:
        first = not _loaded
        if first:
            from importlib.metadata import entry_points

            for ep in entry_points(group=ENTRY_POINT_GROUP):
                importlib.import_module(ep.value)
            _loaded = True
        for module in os.environ.get(PLUGINS_ENV, "").split(","):
            if module.strip():
                importlib.import_module(module.strip())
        if first:
            from cloudvmi import manifest

            manifest.save(_REGISTRY.values())


def _declared(key: str) -> Capability | None:
    """Capability KEY, importing only the module the manifest says declares it (None when
    the manifest is stale or does not know it)."""
    cap = _REGISTRY.get(key)
    if cap is not None or _loaded:
        return cap
    from cloudvmi import manifest

    module = manifest.current().get("modules", {}).get(key)
    if module is not None and module not in sys.modules:
        with _load_lock:
            try:
                importlib.import_module(module)
            except ImportError:
                return None
    return _REGISTRY.get(key)


def get(facet: str, name: str) -> Capability:
    key = f"{facet}.{name}"
    cap = _declared(key)
    if cap is None:
        load()
        cap = _REGISTRY.get(key)
    if cap is None:
        raise AttributeError(f"no {facet} capability {name!r}")
    return cap


def command(facet: str, name: str) -> Capability | None:
    """The capability of FACET whose generic CLI command is NAME, or None."""
    if not _loaded:
        from cloudvmi import manifest

        key = manifest.current().get("commands", {}).get(f"{facet} {name}")
        cap = _declared(key) if key else None
        if cap is not None and cap.cli and cap.command == name:
            return cap
    return next((c for c in all_capabilities(facet) if c.cli and c.command == name), None)


def by_key(key: str) -> Capability | None:
    load()
    return _REGISTRY.get(key)


def all_capabilities(facet: str | None = None) -> list[Capability]:
    load()
    return sorted((c for c in _REGISTRY.values() if facet is None or c.facet == facet),
                  key=lambda c: c.key)


class Facade:
    """Base of the objects that serve one facet: `facade.NAME(...)` calls capability NAME
    through `_invoke(capability, arguments)`; a local facade runs the function, a remote one
    sends the call to the agent. Methods a subclass defines itself take precedence."""

    _facet = ""

    def _invoke(self, cap: Capability, args: dict[str, Any]) -> Any:
        raise NotImplementedError

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            cap = get(self._facet, name)
        except AttributeError:
            raise AttributeError(f"{type(self).__name__} has no {name!r}") from None

        def call(*args, **kwargs):
            bound = cap.bind(args, kwargs)
            cap.check(bound)
            return self._invoke(cap, bound)

        call.__name__, call.__doc__ = cap.name, cap.doc
        return call

    def __dir__(self) -> list[str]:
        return sorted({*object.__dir__(self), *(c.name for c in all_capabilities(self._facet))})
