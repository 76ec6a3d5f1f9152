"""Which operating system a guest runs, found by probing its memory. Each OS package offers
`detect(phys, profile_cache)` (cheap: a few reads when a cached profile fits, else a scan;
truthy when found, and what it found is handed on) and `facade(vm, found)` (its views);
Linux is the only one today, and the probe still runs, so a guest that is not Linux gets a
clear answer."""

import importlib

from cloudvmi.errors import ProfileError

SYSTEMS = ("cloudvmi.os.linux",)


def operating_system(vm):
    """The views facade of the first OS whose probe recognises VM's memory."""
    tried = []
    for name in SYSTEMS:
        module = importlib.import_module(name)
        found = module.detect(vm.phys, vm.profile_cache)
        if found:
            return module.facade(vm, found)
        tried.append(name.rsplit(".", 1)[-1])
    raise ProfileError(f"no supported operating system found in guest memory "
                       f"(probed: {', '.join(tried)})")
