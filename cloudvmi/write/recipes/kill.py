"""kill: send a signal to a guest process (one call at the vDSO's system-call instruction)."""

from cloudvmi.capability import operation
from cloudvmi.write.errors import check


@operation()
def kill(ops, pid: int, sig: int = 15) -> None:
    """Send signal SIG to guest process PID."""
    inj = ops.injector
    inj.hijack(ops.pid, avoid=pid)  # never the process that is about to get the signal
    try:
        check(inj.syscall(inj.abi.nr("kill"), pid, sig), f"kill({pid}, {sig})")
    finally:
        inj.release()
