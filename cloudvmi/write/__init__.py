"""Writable VMI: system calls executed inside the guest, in a hijacked user thread."""
