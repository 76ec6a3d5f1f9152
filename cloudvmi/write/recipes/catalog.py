"""Imports every recipe module beside it, so each declares its operations (an entry point
of `cloudvmi.capabilities`): a new recipe is a new module, nothing to list."""

import importlib
import pkgutil

from cloudvmi.write import recipes

for _module in pkgutil.iter_modules(recipes.__path__):
    importlib.import_module(f"{recipes.__name__}.{_module.name}")
