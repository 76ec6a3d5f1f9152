"""Errors shared by every layer, so callers can catch one family."""


class CloudVMIError(Exception):
    """Base of every error CloudVMI raises on purpose."""


class MissingDependency(CloudVMIError):
    """A host program or package is missing; the message says what to install."""


class GuestMemoryError(CloudVMIError):
    """Guest memory could not be read or is not what it claims to be."""


class UnmappedAddress(GuestMemoryError):
    """A guest address is not backed by RAM or not mapped by the page tables."""

    def __init__(self, address: int, what: str = "address") -> None:
        super().__init__(f"{what} {address:#x} is not mapped")
        self.address = address


class ProfileError(CloudVMIError):
    """The guest kernel could not be identified from its memory."""


class WalkLimit(GuestMemoryError):
    """A walk over guest structures hit a cycle or a bound: the guest may be hostile."""
