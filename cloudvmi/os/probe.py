"""Which operating system a guest runs, found by probing its memory. Each OS package offers
`detect(phys, profile_cache) -> bool` (cheap: a few reads when a cached profile fits, else
a scan) and `facade(vm)` (its views); Linux is the only one today, and the probe still runs,
so a guest that is not Linux gets a clear answer."""

import importlib

from cloudvmi.errors import ProfileError

SYSTEMS = ("cloudvmi.os.linux",)


def operating_system(vm):
    """The views facade of the first OS whose probe recognises VM's memory."""
    tried = []
    for name in SYSTEMS:
        module = importlib.import_module(name)
        if module.detect(vm.phys, vm.profile_cache):
            return module.facade(vm)
        tried.append(name.rsplit(".", 1)[-1])
    raise ProfileError(f"no supported operating system found in guest memory "
                       f"(probed: {', '.join(tried)})")
