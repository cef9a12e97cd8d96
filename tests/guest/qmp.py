"""A minimal QMP client (QEMU Machine Protocol): enough to drive a live migration."""

from __future__ import annotations

import json
import socket
import time
from typing import Any


class QmpError(RuntimeError):
    """QEMU answered a command with an error."""


class Qmp:
    """One QMP connection over a UNIX socket; events are skipped."""

    def __init__(self, path: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self._sock.connect(path)
                break
            except (FileNotFoundError, ConnectionRefusedError):
                self._sock.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        self._sock.settimeout(timeout)
        self._file = self._sock.makefile("rb")
        self._read()  # the greeting
        self.command("qmp_capabilities")

    def _read(self) -> dict[str, Any]:
        line = self._file.readline()
        if not line:
            raise ConnectionError("QEMU closed the QMP connection")
        return json.loads(line)

    def command(self, name: str, **arguments: Any) -> Any:
        message: dict[str, Any] = {"execute": name}
        if arguments:
            message["arguments"] = arguments
        self._sock.sendall(json.dumps(message).encode() + b"\n")
        while True:
            reply = self._read()
            if "event" in reply:
                continue
            if "error" in reply:
                raise QmpError(f"{name}: {reply['error'].get('desc', reply['error'])}")
            return reply.get("return")

    def set_capabilities(self, **capabilities: bool) -> None:
        self.command("migrate-set-capabilities", capabilities=[
            {"capability": name.replace("_", "-"), "state": state}
            for name, state in capabilities.items()])

    def wait_migration(self, timeout: float) -> dict[str, Any]:
        """Poll query-migrate until the migration ends; its last status."""
        deadline = time.monotonic() + timeout
        while True:
            status = self.command("query-migrate")
            if status.get("status") in ("completed", "failed", "cancelled"):
                return status
            if time.monotonic() > deadline:
                raise TimeoutError(f"migration still {status.get('status')} after {timeout} s")
            time.sleep(0.2)

    def close(self) -> None:
        self._file.close()
        self._sock.close()
