"""The figures of docs/EVALUATION.md, drawn from the kept JSON only (so `--render-only`
redraws them without running anything). Each has axes with units, a legend, and the peers
(or the guest's own tools, or published figures, labelled so) in the same figure."""

import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

COLORS = {"CloudVMI": "#1f77b4", "Volatility 3": "#d62728", "drgn": "#2ca02c",
          "in guest": "#7f7f7f", "published": "#9467bd"}


def _save(fig, out: Path, name: str) -> str:
    fig.tight_layout()
    fig.savefig(out / name, dpi=110)
    plt.close(fig)
    return name


def peers(data: dict, out: Path) -> list[str]:
    rows = [r for r in data["tools"] if r["seconds"] is not None
            and r["listing"] in ("processes", "modules", "sockets") and r["ok"]]
    listings = [x for x in ("processes", "modules", "sockets")
                if any(r["listing"] == x for r in rows)]
    series = sorted({(r["tool"], r["run"]) for r in rows})
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    width = 0.8 / max(1, len(series))
    for i, (tool, run) in enumerate(series):
        for ax, key in zip(axes, ("seconds", "rss_mib"), strict=True):
            xs, ys = [], []
            for j, listing in enumerate(listings):
                r = next((r for r in rows if (r["tool"], r["run"], r["listing"])
                          == (tool, run, listing)), None)
                if r:
                    xs.append(j + i * width)
                    ys.append(r[key])
            ax.bar(xs, ys, width, label=f"{tool} ({run})", color=COLORS.get(tool),
                   alpha=1.0 if run != "cold" else 0.55, edgecolor="black", linewidth=0.4)
    for ax, label in zip(axes, ("wall time per listing (s, log)", "peak memory (MiB)"),
                         strict=True):
        ax.set_xticks([j + width * (len(series) - 1) / 2 for j in range(len(listings))],
                      listings)
        ax.set_ylabel(label)
    axes[0].set_yscale("log")
    axes[0].set_title("Same dump, each tool as its own process")
    axes[1].set_title("Peak resident memory of that process")
    axes[0].legend(fontsize=8, loc="upper right")
    return [_save(fig, out, "peers.png")]


def exec_baseline(data: dict, out: Path) -> list[str]:
    rows = data["exec"] + [{"command": o["operation"] + " (operation)",
                            "in_guest_ms": o["in_guest_ms"], "persistent_ms": o["cloudvmi_ms"],
                            "persistent_ratio": o["ratio"]} for o in data["operations"]]
    fig, ax = plt.subplots(figsize=(10, 4.2))
    names = [r["command"] for r in rows]
    x = range(len(rows))
    ax.bar([i - 0.27 for i in x], [r["in_guest_ms"] for r in rows], 0.27,
           label="run inside the guest (its busybox)", color=COLORS["in guest"])
    ax.bar(list(x), [r.get("stop_ms", float("nan")) for r in rows], 0.27,
           label="CloudVMI exec, stop channel", color="#aec7e8")
    ax.bar([i + 0.27 for i in x], [r["persistent_ms"] for r in rows], 0.27,
           label="CloudVMI exec (persistent channel) / operation", color=COLORS["CloudVMI"])
    ax.set_xticks(list(x), names, rotation=15, fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("time per run (ms, log)")
    ax.set_title("From outside against the guest's own tools")
    ax.legend(fontsize=8)
    return [_save(fig, out, "exec.png")]


def overhead(data: dict, out: Path) -> list[str]:
    rows = [r for r in data["rows"] if r["condition"] != "alone"]
    conditions = list(dict.fromkeys(r["condition"] for r in rows))
    fig, ax = plt.subplots(figsize=(10, 4.4))
    for k, (kind, color) in enumerate((("cpu", "#1f77b4"), ("sys", "#ff7f0e"))):
        for c, clock in enumerate(("host", "guest")):
            ys = [100 * next(r[f"{clock}_slowdown"] for r in rows
                             if r["condition"] == cond and r["kind"] == kind)
                  for cond in conditions]
            off = (k * 2 + c - 1.5) * 0.2
            ax.bar([i + off for i in range(len(conditions))], ys, 0.2, color=color,
                   alpha=1.0 if clock == "host" else 0.5, edgecolor="black", linewidth=0.4,
                   label=f"{kind}-bound, {clock} clock")
    ax.axhline(5, color=COLORS["published"], linestyle="--",
               label="HyperShell: <5% guest kernel overhead (published)")
    ax.axhline(0, color="black", linewidth=0.6)
    ax.set_xticks(range(len(conditions)), [textwrap.fill(c, 24) for c in conditions],
                  fontsize=8)
    ax.set_yscale("symlog", linthresh=10)  # a few % and a few 1000 % in one figure
    ax.set_ylabel("slowdown of the guest benchmark (%, log above 10)")
    ax.set_title("Guest-side cost of watching it (against the benchmark alone)")
    ax.legend(fontsize=7)
    return [_save(fig, out, "overhead.png")]


def _peer_lines(ax, points: list[dict], x: str) -> None:
    for key, label in (("volatility_s", "Volatility 3 linux.pslist (dump, warm)"),
                       ("drgn_s", "drgn for_each_task (dump, DWARF)")):
        pts = [(p[x], p[key]) for p in points if p.get(key)]
        if pts:
            tool = "Volatility 3" if key.startswith("vol") else "drgn"
            ax.plot(*zip(*pts, strict=True), "s--", color=COLORS[tool], label=label)


def scaling(data: dict, out: Path) -> list[str]:
    made = []
    pts = data["processes"]["points"]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.plot([p["processes"] for p in pts], [p["cloudvmi_s"] for p in pts], "o-",
            color=COLORS["CloudVMI"], label="CloudVMI process list (live, paused snapshot)")
    _peer_lines(ax, pts, "processes")
    ax.set(xscale="log", yscale="log", xlabel="processes in the guest",
           ylabel="time of one process list (s, log)", title="Process count")
    ax.legend(fontsize=8)
    made.append(_save(fig, out, "scaling-processes.png"))

    pts = data["memory"]["points"]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.plot([p["mem_mib"] for p in pts], [p["cold_s"] for p in pts], "o-",
            color=COLORS["CloudVMI"], label="CloudVMI cold attach + first process list")
    ax.plot([p["mem_mib"] for p in pts], [p["warm_s"] for p in pts], "o:",
            color=COLORS["CloudVMI"], label="CloudVMI process list, attached")
    _peer_lines(ax, pts, "mem_mib")
    ax.set(xscale="log", yscale="log", xlabel="guest memory (MiB)", ylabel="time (s, log)",
           title="Guest memory size")
    ax.set_xticks([p["mem_mib"] for p in pts], [str(p["mem_mib"]) for p in pts])
    ax.legend(fontsize=8)
    made.append(_save(fig, out, "scaling-memory.png"))

    r = data["remote"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for rows, label, style in ((r["local"], "in-process (mmap of the dump)", "o-"),
                               (r["remote"], "through an agent (gRPC, mutual TLS, netns)",
                                "s-")):
        sizes = [p["bytes"] for p in rows]
        axes[0].plot(sizes, [p["latency_s"] * 1e3 for p in rows], style, label=label)
        axes[1].plot(sizes, [p["mb_s"] for p in rows], style, label=label)
    axes[0].set(xscale="log", yscale="log", xlabel="read size (bytes)",
                ylabel="latency, median (ms, log)", title="Physical read latency")
    axes[1].set(xscale="log", yscale="log", xlabel="read size (bytes)",
                ylabel="throughput (MB/s, log)", title="Physical read throughput")
    axes[0].legend(fontsize=8)
    made.append(_save(fig, out, "scaling-remote.png"))

    pts = data["fleet"]["points"]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for key, label, style in (("api_s", "ps --all through the API (warm)", "o-"),
                              ("cli_s", "cloudvmi ps --all (new process)", "s-"),
                              ("first_cli_s", "first ps --all after the agents start", "^:")):
        ax.plot([p["vms"] for p in pts], [p[key] for p in pts], style, label=label)
    ax.set(xlabel="VMs (dumps, up to 10 agents)", ylabel="time of a fleet process list (s)",
           title="Fleet size")
    ax.legend(fontsize=8)
    made.append(_save(fig, out, "scaling-fleet.png"))

    inj = data["injection"]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    us = inj["syscall_us"]
    ax.hist([x / 1e3 for x in us], bins=60, color=COLORS["CloudVMI"], alpha=0.8,
            label=f"injected getpid ({len(us)} calls)")
    for key, style in (("median", "-"), ("p99", "--"), ("p999", ":")):
        v = inj["syscall"][key] * 1e3
        ax.axvline(v, color="black", linestyle=style, label=f"{key} {v:.2f} ms")
    ax.set(xlabel="latency (ms)", ylabel="calls", yscale="log",
           title="Injected system call latency")
    ax.legend(fontsize=8)
    made.append(_save(fig, out, "scaling-injection.png"))
    return made


def effectiveness(data: dict, out: Path) -> list[str]:
    return []  # tables say it better than a chart
