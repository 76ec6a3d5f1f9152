"""A real agent process on loopback (plaintext, which the agent allows only there) serving
this host's lab guests, for tests that need a remote VM without network namespaces."""

import os
import signal
import subprocess
import sys
from pathlib import Path


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _toml(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value) if isinstance(value, int | float) else f'"{value}"'


class Agent:
    def __init__(self, root: Path, env: dict | None = None, config: str | None = None,
                 settings: dict | None = None, vms: tuple[str, ...] = ("*",)) -> None:
        """An agent serving this host's lab guests (VMS of them) to anyone on loopback, with
        SETTINGS added to its [agent] table; or the one CONFIG (an agent.toml) describes."""
        self.root = root
        self.metrics_port = free_port()
        self.env = {**os.environ, **(env or {})}
        self.config = root / "agent.toml"
        table = {"node": "loopback", "listen": "127.0.0.1:0", "insecure": True,
                 "audit_log": root / "audit.jsonl", "lab": True,
                 "metrics_listen": f"127.0.0.1:{self.metrics_port}", **(settings or {})}
        lines = "".join(f"{k} = {_toml(v)}\n" for k, v in table.items())
        self.config.write_text(config or f"""
[agent]
{lines}
[[allow]]
identity = "insecure-loopback"
vms = [{", ".join(_toml(v) for v in vms)}]
permissions = ["read", "write", "operate"]
""")
        self.proc: subprocess.Popen | None = None
        self.address = ""
        self.start()

    def start(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            return
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cloudvmi.cli.main", "agent", "serve", "--config",
             str(self.config)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env={**self.env, "COLUMNS": "200"})
        seen = []
        for _ in range(50):  # gRPC may log a line or two first
            line = self.proc.stdout.readline()
            seen.append(line)
            if "listening on" in line or not line:
                break
        if "listening on" not in line:
            self.proc.kill()
            self.proc.wait(10)
            raise RuntimeError(f"agent did not start: {''.join(seen)}")
        self.address = line.split("listening on ", 1)[1].split()[0]

    def stop(self) -> None:
        """SIGTERM by PID (the agent finishes its calls and detaches from the VMs)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
