"""Choose KVM when it really works here, TCG otherwise: detect, don't assume."""

import os
from pathlib import Path


def kvm_usable() -> tuple[bool, str]:
    """KVM needs /dev/kvm from a hardware module; the PVM software module boots no stock kernel."""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False, "/dev/kvm is missing or not accessible"
    modules = Path("/sys/module")
    if (modules / "kvm_pvm").exists():
        return False, "/dev/kvm is the PVM software module, which stock kernels do not boot under"
    if (modules / "kvm_intel").exists() or (modules / "kvm_amd").exists():
        return True, "hardware KVM"
    return False, "no kvm_intel or kvm_amd module"


def qemu_accel_args(choice: str = "auto") -> list[str]:
    if choice == "auto":
        choice = "kvm" if kvm_usable()[0] else "tcg"
    if choice == "kvm":
        return ["-accel", "kvm", "-cpu", "host"]
    return ["-accel", "tcg", "-cpu", "max"]
