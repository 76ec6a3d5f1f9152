"""The kernels every capability is shown on: one place, so a new kernel joins all tests."""

KERNELS = ["5.10", "6.1", "6.12", "7.2"]  # 7.2: the newest in Debian unstable (split packages)
WRITABLE = ["6.1", "6.12", "7.2"]  # where the writable round trips run
