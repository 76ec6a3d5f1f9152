"""`cloudvmi lab`: boot, list, reach and stop the real guests used by the demo and the tests."""

import sys
import time

import click
from click.shell_completion import CompletionItem
from rich.text import Text

from cloudvmi.cli.output import emit_json, error, say, table, wide_option
from cloudvmi.cli.progress import status
from cloudvmi.errors import CloudVMIError
from cloudvmi.lab import guest as lab_guest
from cloudvmi.lab.guest import MACHINES
from cloudvmi.lab.kernels import FLAVOURS


def _fail(exc: Exception) -> None:
    error(exc)
    sys.exit(1)


def _guest_names(ctx: click.Context, param: click.Parameter,
                 incomplete: str) -> list[CompletionItem]:
    try:
        return [CompletionItem(g.name) for g in lab_guest.list_guests()
                if g.name.startswith(incomplete)]
    except (CloudVMIError, OSError, ValueError):
        return []


@click.group()
def lab() -> None:
    """Small real Linux guests (Debian kernels, busybox) booted by CloudVMI."""


@lab.command()
@click.argument("name")
@click.option("--kernel", default="6.1", show_default=True,
              help="Debian kernel: a version (5.10, 6.1, 7.2, …) or a suite (unstable).")
@click.option("--flavour", type=click.Choice(list(FLAVOURS)), default="generic", show_default=True)
@click.option("--arch", type=click.Choice(list(MACHINES)), default="x86_64", show_default=True,
              help="Guest architecture (arm64: qemu-system-aarch64 -M virt -cpu max, TCG).")
@click.option("--mem", default="256M", show_default=True, help="Guest RAM, e.g. 256M or 4G.")
@click.option("--smp", default=1, show_default=True, help="Number of vCPUs.")
@click.option("--paging", type=click.Choice(["4", "5"]), default="5", show_default=True,
              help="Page-table levels (5 needs a CPU with LA57; TCG has it).")
@click.option("--extra-procs", default=0, show_default=True,
              help="Extra sleeping processes the workload starts (e.g. 1000 for benchmarks).")
@click.option("--accel", type=click.Choice(["auto", "kvm", "tcg"]), default="auto",
              show_default=True)
@click.option("--busy/--no-busy", default=True, show_default=True,
              help="Start the workload's busy loop (it takes a host core under TCG).")
@click.option("--shm/--no-shm", default=True, show_default=True,
              help="Guest RAM in a shared-memory file (fast); without it CloudVMI reads "
                   "/proc/<qemu>/mem.")
@click.option("--json", "as_json", is_flag=True)
def up(name: str, kernel: str, flavour: str, arch: str, mem: str, smp: int, paging: str,
       extra_procs: int,
       accel: str, busy: bool, shm: bool, as_json: bool) -> None:
    """Boot lab guest NAME and wait until its workload runs."""
    start = time.monotonic()
    try:
        with status(f"Booting {name} (Linux {kernel} {flavour} {arch})…", hide=as_json):
            g = lab_guest.up(name, kernel=kernel, flavour=flavour, arch=arch, mem=mem, smp=smp,
                             paging=int(paging), extra_procs=extra_procs, accel=accel,
                             shm=shm, busy=busy)
    except CloudVMIError as exc:
        _fail(exc)
    if as_json:
        return emit_json(g.meta)
    say(Text(name, style="green"), f" is up: Linux {g.meta['release']}, pid {g.pid}, "
        f"{g.meta['accel']}, {time.monotonic() - start:.1f} s")


@lab.command(name="ls")
@click.option("--json", "as_json", is_flag=True)
@wide_option
def ls_(as_json: bool) -> None:
    """List lab guests."""
    guests = lab_guest.list_guests()
    rows = [{"name": g.name, "running": g.running(), "pid": g.pid, "kernel": g.meta["release"],
             "arch": g.meta.get("arch", "x86_64"),
             "mem_mib": g.meta["mem_mib"], "smp": g.meta["smp"], "paging": g.meta["paging"],
             "qmp": str(g.qmp_path)} for g in guests]
    if as_json:
        return emit_json(rows)
    table("Lab guests", ["NAME", "STATE", "PID", "KERNEL", "MEM", "CPUS", "QMP"],
          ((r["name"], "running" if r["running"] else "stopped", r["pid"], r["kernel"],
            f"{r['mem_mib']}M", r["smp"], r["qmp"]) for r in rows))


@lab.command()
@click.argument("names", nargs=-1, required=True, shell_complete=_guest_names)
def down(names: tuple[str, ...]) -> None:
    """Stop lab guests and remove their files."""
    for name in names:
        try:
            lab_guest.down(name)
        except CloudVMIError as exc:
            _fail(exc)
        say(f"{name} stopped")


@lab.command(name="console", context_settings={"ignore_unknown_options": True})
@click.argument("name", shell_complete=_guest_names)
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@click.option("--timeout", default=60.0, show_default=True)
def console_(name: str, command: tuple[str, ...], timeout: float) -> None:
    """Run COMMAND in guest NAME's shell over its serial console: lab console NAME -- CMD."""
    try:
        guest = lab_guest.get(name)
        if not guest.running():
            raise CloudVMIError(f"lab guest {name!r} is not running (see `cloudvmi lab ls`)")
        code, out = guest.console.run(" ".join(command), timeout=timeout)
    except CloudVMIError as exc:
        _fail(exc)
    sys.stdout.write(out)
    sys.exit(code)

