"""The kernels every capability is shown on: one place, so a new kernel joins all tests.

"unstable" is whatever Debian unstable carries today (7.2 when this was written: split image
packages, place-relative kallsyms, per-CPU symbols as kernel addresses): the next kernel is
tested the day it is uploaded, with no change here."""

KERNELS = ["5.10", "6.1", "6.12", "unstable"]
WRITABLE = ["6.1", "6.12", "unstable"]  # where the writable round trips run
NEWEST = KERNELS[-1]
