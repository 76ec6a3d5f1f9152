"""Loaded by Volatility from a plugin directory (`vol -p DIR`): adds the `cloudvmi:` URL
scheme, so `-f cloudvmi:VM` reads a VM through CloudVMI, and the stacker of its RAM regions.
It defines no plugin."""

from cloudvmi.ecosystem.volatility import CloudVMIHandler, CloudVMIStacker  # noqa: F401
