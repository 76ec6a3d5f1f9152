"""`cloudvmi exec VM -- CMD ARGS...`: an unmodified host program run against a guest."""

import sys

import click

from cloudvmi.cli.complete import VM_NAME
from cloudvmi.cli.output import say
from cloudvmi.cli.views import open_vm, run_or_exit
from cloudvmi.write.operations import CHANNEL_MODES
from cloudvmi.write.recipes.run import TIMEOUT


@click.command("exec")
@click.argument("vm", **VM_NAME)
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@click.option("--timeout", type=click.FloatRange(TIMEOUT.low, TIMEOUT.high), default=300.0,
              show_default=True, help="Seconds before the program is killed.")
@click.option("--cwd", default="/", show_default=True, help="Its working directory, in the guest.")
@click.option("--channel", type=click.Choice(CHANNEL_MODES), default="stop", show_default=True,
              help="stop: the VM is stopped while each list of calls runs in a hijacked "
                   "thread. persistent: a helper process in the guest, fed through memory, "
                   "runs them without stopping the VM; it is visible to the guest and a "
                   "guest root can tamper with it, and it goes away when this command ends.")
@click.option("--stats", is_flag=True, help="Print guest resumes, guest calls and time to stderr.")
def exec_command(vm: str, command: tuple[str, ...], timeout: float, cwd: str, channel: str,
                 stats: bool) -> None:
    """Run a host program (ls, ps, find, sysctl, sh -c '...') with every system call it makes
    on files, /proc, /sys, identity and signals executed inside the guest. Its memory, stdio
    and exit status stay here. VM@NODE runs it against a VM of another node's agent."""

    def go():
        with open_vm(vm, writable=True) as target:
            return target.exec(list(command), stdin=None, timeout=timeout, cwd=cwd,
                               capture=False, channel=channel)

    result = run_or_exit(go)
    if stats:
        say(f"cloudvmi exec: {result.resumes} guest resumes, {result.guest_calls} guest "
            f"calls, {result.stops} stops, {result.seconds * 1000:.0f} ms"
            + (" (timed out)" if result.timed_out else ""), err=True)
    sys.exit(result.status)
