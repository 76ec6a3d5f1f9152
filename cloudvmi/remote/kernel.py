"""`vm.linux.kernel` of a remote VM: the profile and BTF travel once from the agent, the
kernel object is built here, and every memory read it makes goes through the agent. The
drgn-like typed objects then work on a VM of another node as on a local one."""

from cloudvmi import arch as arches
from cloudvmi.memory.base import PhysicalMemory, Region
from cloudvmi.os.linux.btf import BTF
from cloudvmi.os.linux.kernel import LinuxKernel, LocateStats
from cloudvmi.os.linux.profile import Profile


class RemotePhysicalMemory(PhysicalMemory):
    """Guest-physical memory read through an agent (one call per read)."""

    def __init__(self, vm, regions: list[Region]) -> None:
        super().__init__(regions)
        self.vm = vm

    def _read_at(self, offset: int, size: int) -> bytes:
        return self.vm.read_physical(offset, size)  # regions map addresses to themselves


def remote_kernel(vm) -> LinuxKernel:
    p = vm.kernel_profile()
    phys = RemotePhysicalMemory(vm, [Region(start, size, start) for start, size in p.regions])
    stats = LocateStats(warm=True)
    return LinuxKernel(phys, Profile.from_json(p.profile), BTF.from_bytes(p.btf), p.text_phys,
                       p.text_virt, p.levels, stats, arches.get(p.arch))
