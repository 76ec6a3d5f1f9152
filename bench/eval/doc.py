"""docs/EVALUATION.md from the kept JSON: tables, the figures, the machine and versions, and
for every table the data file and the function that made it."""

from pathlib import Path

SCRIPT = "bench/evaluate.py"


def _f(v, digits: int = 2, scale: float = 1.0, suffix: str = "") -> str:
    if v is None:
        return "—"
    return f"{v * scale:.{digits}f}{suffix}"


def _pct(v) -> str:
    return "—" if v is None else f"{100 * v:.1f}%"


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head),
            *["| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |" for r in rows], ""]


def _source(name: str, fn: str) -> str:
    return (f"*Data: [`evaluation/data/{name}.json`](evaluation/data/{name}.json), made by "
            f"`{fn}` ({SCRIPT}).*")


def render(data: dict, figures: dict[str, list[str]], quick: bool) -> str:
    m = data["machine"]
    out = ["# CloudVMI evaluation", ""]
    if quick:
        out += ["> **Quick run**: the smallest settings, to check the harness works end to "
                "end. Its figures are not the evaluation.", ""]
    runs = m.get("runs") or []
    if len(runs) > 1:  # families run separately (`--only`), each kept with its own run
        out += [f"Made by `{SCRIPT}` in {len(runs)} runs, each keeping the figures of the "
                "families it ran (`--only` reruns some): " + "; ".join(
                    f"{', '.join(r['families'])} on {r['date']} ({r['minutes']:.0f} min, "
                    f"commit `{r['commit'][:10]}`)" for r in runs)
                + ". Reproduce: [evaluation/README.md](evaluation/README.md).", ""]
    else:
        out += [f"Made by `{SCRIPT}` in one run on {m['date']}"
                f" ({data.get('elapsed_min', 0):.0f} min). Reproduce: "
                "[evaluation/README.md](evaluation/README.md).", ""]
    out += ["## Machine and versions", ""]
    out += _table(["", ""], [
        ["CPU", f"{m['cpu']} ({m['cores']} cores, {m['usable_cores']} usable)"],
        ["RAM", f"{m['ram_gib']} GiB"], ["host kernel", m["kernel"]], ["QEMU", m["qemu"]],
        ["acceleration", m["accel"]], ["load average at start", f"{m['load_at_start']:.2f}"],
        ["CloudVMI", f"`{m['cloudvmi_commit']}`"], ["Python", m["python"]],
        ["Volatility 3", m["volatility3"]], ["drgn", m["drgn"]]])
    out += ["Guests are QEMU/TCG lab guests (Debian kernels, busybox userland) unless KVM is "
            "named above; under TCG every guest-side figure is slower than under KVM, and the "
            "host's other load moves figures by up to 2x between runs.", ""]
    if "peers" in data:
        out += _peers(data["peers"], figures.get("peers", []))
    if "overhead" in data:
        out += _overhead(data["overhead"], figures.get("overhead", []))
    if "scaling" in data:
        out += _scaling(data["scaling"], figures.get("scaling", []))
    if "effectiveness" in data:
        out += _effectiveness(data["effectiveness"])
    return "\n".join(out)


def _img(names: list[str], name: str, alt: str) -> list[str]:
    return [f"![{alt}](evaluation/{name})", ""] if name in names else []


def _peers(p: dict, figs: list[str]) -> list[str]:
    g = p["guest"]
    out = ["## CloudVMI beside Volatility 3 and drgn", "",
           f"One dump of a {g['kernel']} guest ({g['mem_mib']} MiB, 4-level paging: Volatility "
           "3 walks 4-level page tables only). Each tool runs as its own process on the same "
           "file; *recall* is the share of what the guest's own `/proc` showed (pids alive "
           "before and after the dump, `/proc/modules`, inet sockets of `/proc/net`) that the "
           "tool found, *extra* what it found that the guest never showed. *cold*: no cache "
           "(CloudVMI builds its profile from the guest's memory; Volatility checks and "
           "indexes the ISF); *warm*: caches kept.",
           f"Guest's own view: {p['truth']['processes']} processes, {p['truth']['modules']} "
           f"modules, {p['truth']['sockets']} inet sockets.", ""]
    rows = [[r["tool"], r["listing"], r["run"], _f(r["seconds"]), _f(r["rss_mib"], 0),
             "—" if r.get("found") is None else r["found"], _pct(r.get("recall")),
             "—" if r.get("extra") is None else r["extra"],
             ("**failed** " if r["ok"] is False else "") + r["note"]] for r in p["tools"]]
    out += _table(["tool", "listing", "run", "seconds", "peak RSS (MiB)", "found", "recall",
                   "extra", "note"], rows)
    out += _img(figs, "peers.png", "time and memory of each tool per listing")
    out += ["### `exec` and guest operations against the guest's own tools", "",
            "The same busybox command run inside the guest (timed by the guest's clock over "
            "many runs) and run on the host with its system calls made in the guest "
            "(`cloudvmi exec`), and CloudVMI's guest operations against the guest's `cat`, "
            "`ls`, `stat`.", ""]
    out += _table(["command", "in guest (ms)", "exec stop (ms)", "ratio",
                   "exec persistent (ms)", "ratio"],
                  [[r["command"], _f(r["in_guest_ms"]), _f(r["stop_ms"]),
                    _f(r["stop_ratio"], 1, suffix="x"), _f(r["persistent_ms"]),
                    _f(r["persistent_ratio"], 1, suffix="x")] for r in p["exec"]])
    out += _table(["operation", "in guest (ms)", "CloudVMI (ms)", "ratio"],
                  [[r["operation"], _f(r["in_guest_ms"]), _f(r["cloudvmi_ms"]),
                    _f(r["ratio"], 1, suffix="x")] for r in p["operations"]])
    out += _img(figs, "exec.png", "exec and operations against in-guest tools")
    out += ["### Published figures (quoted, not measured here)", "",
            "These systems' code cannot be run here; their authors' figures, on their "
            "hardware and guests, are quoted as published.", ""]
    out += _table(["system", "what", "published figure", "source"],
                  [[r["system"], r["figure"], r["value"],
                    f"[{r['source']}]({r['url']})" if r["url"] else r["source"]]
                   for r in p["published"]])
    return out + [_source("peers", "bench/eval/peers.py: run"), ""]


def _overhead(o: dict, figs: list[str]) -> list[str]:
    g = o["guest"]
    out = ["## Guest-side overhead", "",
           f"A CPU-bound and a system-call-bound benchmark (`/bin/workload bench cpu|sys N`, "
           f"N rounds for ~{o['seconds']:.0f} s alone) inside a {g['kernel']} guest "
           f"({g['mem_mib']} MiB, {g['accel']}), median of {o['repeats']} runs per cell. "
           "*Host clock*: wall time of the whole run, pauses included; *guest clock*: the "
           "guest's CLOCK_MONOTONIC, which stops while QEMU is stopped.", ""]
    out += _table(["watching", "benchmark", "host s", "slowdown (host)", "guest s",
                   "slowdown (guest)", "note"],
                  [[r["condition"], r["kind"], _f(r["host_s"]), _pct(r["host_slowdown"]),
                    _f(r["guest_s"]), _pct(r["guest_slowdown"]), r.get("error", "")]
                   for r in o["rows"]])
    out += _img(figs, "overhead.png", "slowdown per way of watching")
    return out + [_source("overhead", "bench/eval/overhead.py: run"), ""]


def _scaling(sc: dict, figs: list[str]) -> list[str]:
    out = ["## Scaling", "", "### Process count", ""]
    out += _table(["processes", "CloudVMI (ms)", "Volatility 3 (s)", "drgn (s)"],
                  [[p["processes"], _f(p["cloudvmi_s"], 1, 1e3), _f(p.get("volatility_s")),
                    _f(p.get("drgn_s"))] for p in sc["processes"]["points"]])
    out += _img(figs, "scaling-processes.png", "process list time against processes")
    out += ["### Guest memory", ""]
    out += _table(["guest MiB", "cold attach + list (s)", "list (ms)", "Volatility 3 (s)",
                   "drgn (s)"],
                  [[p["mem_mib"], _f(p["cold_s"]), _f(p["warm_s"], 1, 1e3),
                    _f(p.get("volatility_s")), _f(p.get("drgn_s"))]
                   for p in sc["memory"]["points"]])
    out += _img(figs, "scaling-memory.png", "view time against guest memory")
    out += ["### Remote reads against message size", ""]
    remote = {p["bytes"]: p for p in sc["remote"]["remote"]}
    out += _table(["bytes", "local latency (ms)", "local MB/s", "remote latency (ms)",
                   "remote p99 (ms)", "remote MB/s"],
                  [[p["bytes"], _f(p["latency_s"], 3, 1e3), _f(p["mb_s"], 0),
                    _f(remote.get(p["bytes"], {}).get("latency_s"), 3, 1e3),
                    _f(remote.get(p["bytes"], {}).get("p99_s"), 3, 1e3),
                    _f(remote.get(p["bytes"], {}).get("mb_s"), 0)]
                   for p in sc["remote"]["local"]])
    out += _img(figs, "scaling-remote.png", "remote latency and throughput")
    out += ["### Fleet size", ""]
    out += _table(["VMs", "agents", "answered", "processes", "API (s)", "CLI (s)",
                   "first after start (s)", "errors"],
                  [[p["vms"], p["agents"], p["found_vms"], p["processes"], _f(p["api_s"]),
                    _f(p["cli_s"]), _f(p["first_cli_s"]), len(p["errors"])]
                   for p in sc["fleet"]["points"]])
    out += _img(figs, "scaling-fleet.png", "fleet process list against VMs")
    inj = sc["injection"]
    out += ["### Injected system calls", ""]
    out += _table(["", "n", "p50 (ms)", "p99 (ms)", "p99.9 (ms)", "max (ms)"],
                  [[label, d["n"], _f(d["median"], 3, 1e3), _f(d["p99"], 3, 1e3),
                    _f(d["p999"], 3, 1e3), _f(d["max"], 3, 1e3)]
                   for label, d in (("one syscall in a hijacked thread", inj["syscall"]),
                                    ("hijack + syscall + restore", inj["cycle"]))])
    out += _img(figs, "scaling-injection.png", "injection latency histogram")
    return out + [_source("scaling", "bench/eval/scaling.py: run"), ""]


def _effectiveness(e: dict) -> list[str]:
    out = ["## Effectiveness", "", "### Planted cases", "",
           "Each planted on a live guest while the application was not looking, detected or "
           "not, then undone.", ""]
    out += _table(["case", "application", "planted", "found", "other findings", "detected",
                   "seconds"],
                  [[c["case"], c["app"], c["planted"], c["found"], c["other_findings"],
                    "yes" if c["detected"] else "**no**", _f(c["seconds"])]
                   for c in e["cases"]])
    out += ["### False positives on clean guests", "",
            "A freshly booted guest of each kernel of the test matrix: hunt (every hidden-object "
            "and integrity check), fim (baseline then check of /etc and /bin), guard (a policy "
            "of forbidden names and ports), enforce (a plan of the guest's current state). "
            "Every finding here is a false positive.", ""]
    out += _table(["kernel", "hunt", "fim", "guard", "enforce", "findings"],
                  [[r["kernel"], r["hunt"], r["fim"], r["guard"], r["enforce"],
                    "; ".join(r["detail"]) or "none"] for r in e["clean"]])
    return out + [_source("effectiveness", "bench/eval/effectiveness.py: run"), ""]


def write(path: Path, text: str) -> None:
    path.write_text(text + "\n")
