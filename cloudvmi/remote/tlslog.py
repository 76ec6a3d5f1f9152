"""Denials that happen in the TLS handshake (no client certificate, one from another CA)
never reach the agent's handlers: gRPC refuses them inside its C core. The only place they
show is gRPC's own log line "Handshake failed with error ...". The agent therefore runs gRPC
at INFO verbosity with its stderr through a pipe: handshake failures become audit records,
warnings and errors pass through, the rest of the INFO chatter is dropped."""

import os
import re
import sys
import threading

_HANDSHAKE = re.compile(r"Handshake failed with error (.*)")
_INFO = re.compile(r"^I\d{4} ")
_NOISE = ("Log level INFO is not suitable",)


def enable_before_grpc() -> None:
    """Must run before grpc is first imported (its verbosity is read at start-up)."""
    os.environ["GRPC_VERBOSITY"] = "INFO"


def watch(on_denial) -> None:
    """Route fd 2 through a pipe; call ON_DENIAL(reason) for every failed TLS handshake."""
    real = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)
    sys.stderr = os.fdopen(os.dup(real), "w", buffering=1)

    def pump() -> None:
        with os.fdopen(read_end, "r", errors="replace") as lines:
            for line in lines:
                match = _HANDSHAKE.search(line)
                if match:
                    try:
                        on_denial(match.group(1).strip())
                    except Exception as exc:  # never let logging kill the pump
                        os.write(real, f"audit of a TLS denial failed: {exc}\n".encode())
                elif not _INFO.match(line) and not any(n in line for n in _NOISE):
                    os.write(real, line.encode())

    threading.Thread(target=pump, daemon=True, name="cloudvmi-tls-log").start()
