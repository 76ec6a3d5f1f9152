"""The kernels every capability is shown on: one place, so a new kernel joins all tests.

"unstable" is whatever Debian unstable carries today (7.2 when this was written: split image
packages, place-relative kallsyms, per-CPU symbols as kernel addresses): the next kernel is
tested the day it is uploaded, with no change here."""

KERNELS = ["5.10", "6.1", "6.12", "unstable"]
WRITABLE = ["6.1", "6.12", "unstable"]  # where the writable round trips run
NEWEST = KERNELS[-1]
# arm64 guests (TCG emulation of AArch64 is slower here: the views, and a lean set of writes
# in tests/test_arm64_write.py, one guest per kernel for each).
# "arm64:6.1" is Debian's 48-bit kernel without KALLSYMS_ALL, "arm64:6.12" its 52-bit (LPA2)
# one on a CPU that has FEAT_LPA2, so both translation depths are shown.
ARM64 = ["arm64:6.1", "arm64:6.12"]


def split(kernel: str) -> tuple[str, str]:
    """("arm64", "6.1") for "arm64:6.1"; ("x86_64", "6.1") for "6.1"."""
    arch, _, version = kernel.rpartition(":")
    return arch or "x86_64", version
