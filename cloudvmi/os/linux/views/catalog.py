"""Imports every view module beside it, so each declares its views (an entry point of
`cloudvmi.capabilities`): a new view is a new module, nothing to list."""

import importlib
import pkgutil

from cloudvmi.os.linux import views

for _module in pkgutil.iter_modules(views.__path__):
    importlib.import_module(f"{views.__name__}.{_module.name}")
