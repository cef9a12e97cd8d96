"""Start a virtio-fs daemon on a shared directory, connect to it, and always clean up.

:func:`running_daemon` is what test fixtures wrap: it runs a command line (ours, or a
reference daemon's), waits for its vhost-user socket, connects a :class:`FuseClient` and
yields a :class:`DaemonSession`.  On exit it disconnects (the daemons exit when their
front-end goes away), waits, and escalates to SIGTERM and then SIGKILL of the process group
it created, so a wedged daemon can neither hang the test run nor outlive it.

The daemon's stdout and stderr go to a log file whose tail is attached to every start-up
error, because "the socket never appeared" is useless without the daemon's own complaint.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from virtiofsd.testing.frontend import VhostUserFrontend
from virtiofsd.testing.fuse_client import FuseClient
from virtiofsd.testing.guest_memory import GuestMemory

__all__ = ["DaemonSession", "DaemonStartError", "running_daemon", "connect"]

SOCKET_PLACEHOLDER = "{socket_path}"
SHARED_DIR_PLACEHOLDER = "{shared_dir}"
_LOG_TAIL = 4000


class DaemonStartError(RuntimeError):
    """The daemon exited or never listened; the message carries the end of its log."""


@dataclasses.dataclass
class DaemonSession:
    """A running daemon and (unless ``connect=False``) a FUSE client connected to it."""

    process: subprocess.Popen[bytes]
    socket_path: Path
    shared_dir: Path
    log_path: Path
    client: FuseClient | None = None

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def connect(self, *, timeout: float = 5.0, init: bool = True, **options: object) -> FuseClient:
        """Connect a (further) client; the reference daemons accept one front-end at a time."""
        return connect(self.socket_path, timeout=timeout, init=init, **options)


def connect(
    socket_path: str | os.PathLike[str],
    *,
    timeout: float = 5.0,
    init: bool = True,
    queue_size: int = 128,
    event_idx: bool = False,
    vring_base: int = 0,
    split_descriptors: bool = True,
    uid: int = 0,
    gid: int = 0,
    pid: int | None = None,
    memory: GuestMemory | None = None,
) -> FuseClient:
    """Connect to a daemon's socket, run the QEMU start-up sequence, and (by default) FUSE_INIT.

    ``memory`` replaces the default single-region guest memory (e.g. to test several regions);
    the client takes ownership of it.
    """
    frontend = VhostUserFrontend.connect(socket_path, timeout=timeout)
    try:
        frontend.start(memory, queue_size=queue_size, event_idx=event_idx, vring_base=vring_base)
        client = FuseClient(
            frontend, uid=uid, gid=gid, pid=pid, split_descriptors=split_descriptors
        )
    except BaseException:
        frontend.close()
        if memory is not None:
            memory.close()
        raise
    try:
        if init:
            client.init()
    except BaseException:
        client.close()
        raise
    return client


@contextlib.contextmanager
def running_daemon(
    command: Sequence[str],
    shared_dir: str | os.PathLike[str],
    *,
    socket_path: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    start_timeout: float = 10.0,
    stop_timeout: float = 5.0,
    connect_client: bool = True,
    **client_options: object,
) -> Iterator[DaemonSession]:
    """Run ``command`` and yield a :class:`DaemonSession`; tear everything down on exit.

    ``{socket_path}`` and ``{shared_dir}`` in the arguments are replaced by the paths.  The
    socket defaults to a fresh short directory under the system temp dir (UNIX socket paths are
    limited to 107 bytes, which pytest's tmp_path can exceed).  ``client_options`` go to
    :func:`connect`.
    """
    workdir = Path(tempfile.mkdtemp(prefix="vfsd-"))
    sock = Path(socket_path) if socket_path is not None else workdir / "vhost.sock"
    share = Path(shared_dir)
    argv = [
        arg.replace(SOCKET_PLACEHOLDER, str(sock)).replace(SHARED_DIR_PLACEHOLDER, str(share))
        for arg in command
    ]
    log_path = workdir / "daemon.log"
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=None if env is None else dict(env),
            start_new_session=True,
        )
    session = DaemonSession(process, sock, share, log_path)
    try:
        _wait_for_socket(session, start_timeout)
        if connect_client:
            session.client = connect(sock, timeout=start_timeout, **client_options)  # type: ignore[arg-type]
        yield session
    finally:
        try:
            if session.client is not None:
                session.client.close()
        finally:
            _stop(process, stop_timeout)
            shutil.rmtree(workdir, ignore_errors=True)


def _wait_for_socket(session: DaemonSession, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not session.socket_path.exists():
        code = session.process.poll()
        if code is not None:
            raise DaemonStartError(
                f"daemon exited with status {code} before listening on {session.socket_path}:\n"
                f"{session.log_text()[-_LOG_TAIL:]}"
            )
        if time.monotonic() >= deadline:
            raise DaemonStartError(
                f"daemon did not create {session.socket_path} within {timeout:g}s:\n"
                f"{session.log_text()[-_LOG_TAIL:]}"
            )
        time.sleep(0.01)


def _stop(process: subprocess.Popen[bytes], timeout: float) -> None:
    """Wait for a voluntary exit, then SIGTERM, then SIGKILL the daemon's process group."""
    try:
        process.wait(timeout)
        return
    except subprocess.TimeoutExpired:
        pass
    for sig, grace in ((signal.SIGTERM, 2.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            pass
        try:
            process.wait(grace)
            return
        except subprocess.TimeoutExpired:
            continue
    raise TimeoutError(errno.ETIMEDOUT, f"daemon pid {process.pid} survived SIGKILL")
