"""A synchronous QMP client over the qemu.qmp library, for callers that are not asyncio.

Its interface is what the rest of CloudVMI asks of a VM's monitor: `execute`, `hmp`, `key`
(names the VM on this host: journal, pause marker, gdbstub socket), `pid()` (the QEMU
process, whose memory is read) and `close`. `control/libvirt.py` offers the same over
libvirt's monitor passthrough."""

import asyncio
import atexit
import json
import os
import threading
from typing import Any

from cloudvmi.errors import CloudVMIError, MissingDependency


class QMPError(CloudVMIError):
    """QEMU refused a QMP command or the socket is gone."""


class QMP:
    """One QMP connection, driven from a private event loop thread."""

    def __init__(self, socket_path: str, timeout: float = 10.0) -> None:
        try:
            from qemu.qmp import QMPClient
        except ImportError as exc:  # pragma: no cover - install problem
            raise MissingDependency("the qemu.qmp package is needed: pip install qemu.qmp") from exc
        self.socket_path = socket_path
        self.timeout = timeout
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name="cloudvmi-qmp")
        self._thread.start()
        self._client = QMPClient("cloudvmi")
        try:
            self._call(self._client.connect(socket_path))
        except Exception as exc:
            self.close()
            raise QMPError(f"cannot connect to QMP at {socket_path}: {exc}") from exc
        # A caller that never closes would leave the loop to die mid-task at exit, which
        # asyncio reports noisily: disconnect cleanly instead.
        atexit.register(self.close)

    def _call(self, coro) -> Any:
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return future.result(self.timeout)

    def execute(self, command: str, **arguments: Any) -> Any:
        try:
            return self._call(self._client.execute(command, arguments or None))
        except Exception as exc:
            raise QMPError(f"QMP {command} {json.dumps(arguments)}: {exc}") from exc

    def hmp(self, command_line: str) -> str:
        """Run a human-monitor command (for the few facts QMP has no command for)."""
        return self.execute("human-monitor-command", **{"command-line": command_line})

    @property
    def key(self) -> str:
        """What names this VM on this host, whoever connects: its socket's real path."""
        return os.path.realpath(self.socket_path)

    def pid(self) -> int:
        """The QEMU process behind the socket (its peer credentials)."""
        from cloudvmi.control.discovery import qemu_pid

        return qemu_pid(self.socket_path)

    def close(self) -> None:
        if self._loop.is_closed():
            return
        atexit.unregister(self.close)
        try:
            if self._client.runstate.name != "IDLE":
                self._call(self._client.disconnect())
        except Exception:
            pass
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(2)
        self._loop.close()

    def __enter__(self) -> "QMP":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
