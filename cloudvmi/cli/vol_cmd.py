"""`cloudvmi isf VM -o FILE`: a Volatility 3 ISF of the guest's kernel from its own BTF and
kallsyms; `cloudvmi vol VM PLUGIN ...`: Volatility's plugins on the VM, read through
CloudVMI, with that ISF."""

import sys
import time

import click

from cloudvmi.cli.output import console, emit_json
from cloudvmi.cli.views import open_vm, run_or_exit


@click.command()
@click.argument("vm")
@click.option("-o", "--output", "path", required=True, metavar="FILE",
              help="Where to write it: FILE.json, FILE.json.xz or FILE.json.gz.")
@click.option("--json", "as_json", is_flag=True, help="Print what was written as JSON.")
def isf(vm: str, path: str, as_json: bool) -> None:
    """Write a Volatility 3 ISF (symbol table) of VM's kernel: its BTF types, its kallsyms
    at link-time addresses and its banner, from guest memory, with no debug package."""
    from cloudvmi.os.linux.isf_export import SUFFIXES, kernel_isf, write_isf

    if not path.endswith(SUFFIXES):
        raise click.BadParameter(f"the file name must end in {', '.join(SUFFIXES)}",
                                 param_hint="-o")

    def go() -> dict:
        start = time.perf_counter()
        with open_vm(vm) as v:
            made = kernel_isf(v.linux.kernel)
        size = write_isf(made, path)
        return {"path": path, "bytes": size, "types": len(made["user_types"]),
                "base_types": len(made["base_types"]), "enums": len(made["enums"]),
                "symbols": len(made["symbols"]),
                "typed_symbols": sum("type" in s for s in made["symbols"].values()),
                "seconds": round(time.perf_counter() - start, 2)}

    out = run_or_exit(go)
    if as_json:
        return emit_json(out)
    console.print(f"wrote {out['path']} ({out['bytes']} bytes): {out['types']} types, "
                  f"{out['base_types']} base types, {out['enums']} enums, {out['symbols']} "
                  f"symbols ({out['typed_symbols']} typed) in {out['seconds']} s",
                  markup=False, highlight=False)


@click.command(context_settings={"ignore_unknown_options": True,
                                 "allow_interspersed_args": False})
@click.argument("vm")
@click.option("--no-pause", is_flag=True,
              help="Let a running VM run while the plugin reads it (lists may change "
                   "under it).")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def vol(vm: str, no_pause: bool, args: tuple[str, ...]) -> None:
    """Run Volatility 3 on VM: `cloudvmi vol [--no-pause] VM [VOL OPTIONS] PLUGIN [PLUGIN
    OPTIONS]`, e.g. `cloudvmi vol web-1 -r json linux.pslist`. Memory is read through
    CloudVMI (a running, dumped or remote VM), the kernel's ISF is made from guest memory and
    cached, and a running VM is paused for the run unless --no-pause. Needs
    `cloudvmi[volatility]`."""
    try:
        from cloudvmi.ecosystem.volatility import run_volatility
    except ImportError as exc:
        raise click.ClickException(f"Volatility 3 is not installed ({exc}): "
                                   "pip install 'cloudvmi[volatility]'") from exc

    def go() -> int:
        with open_vm(vm) as v:
            return run_volatility(vm, v, list(args), hold_still=not no_pause)

    sys.exit(run_or_exit(go))
