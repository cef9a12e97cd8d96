"""The daemon's life, start to exit: the order of start-up steps matters, so it lives in one place.

1. Load the plugins the configuration selects, so that a missing one stops the daemon with a
   clear message before it listens (a front-end must never connect to a daemon about to fail).
2. Take the ``<socket>.pid`` lock; create the listening socket (umask 077, or 007 with
   ``--socket-group``, then chown to that group), or adopt ``--fd``.
3. Raise RLIMIT_NOFILE; drop supplementary groups (CVE-2022-0358: a guest must never create files
   with a group the daemon merely happened to be in).  Both need privileges dropped later.
4. Enter the sandbox (``--sandbox``).  In namespace mode the process forks: the parent drops
   every capability, waits for the child and exits with its status, then removes the socket and
   the pid file; the child goes on with the shared folder as ``/``.
5. Let every plugin configure itself inside the sandbox, on the shared folder as it now sees it
   (the file-system plugin opens it and sets the umask it needs).
6. Drop the capabilities the file server does not need (``--modcaps``), then load the seccomp
   filter (``--seccomp``): both before any thread exists.
7. Accept exactly one front-end connection, inside the sandbox, and serve it; when the front-end
   goes away, stop and exit 0, as the Rust daemon does.
"""

from __future__ import annotations

import dataclasses
import errno
import grp
import logging
import os
import signal
import socket
from typing import Any

from virtiofsd import native
from virtiofsd.config import Config
from virtiofsd.errors import ConfigError
from virtiofsd.fuse.router import FuseRouter
from virtiofsd.io.daemon import serve_connection
from virtiofsd.io.device_state import DeviceStateTransfer
from virtiofsd.io.pidfile import PidFile
from virtiofsd.io.unix_socket import accept_one, adopt_listener, listen_at
from virtiofsd.limits import apply_rlimit_nofile
from virtiofsd.manager import make_plugin_manager
from virtiofsd.sandbox.capabilities import drop_capabilities
from virtiofsd.sandbox.isolation import enter_sandbox, wait_for_child
from virtiofsd.sandbox.seccomp import apply_seccomp

log = logging.getLogger(__name__)


def _exit_on_signal(signum: int, frame: Any) -> None:
    raise SystemExit(1)


_UNWRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)


def _unwritable_socket_folder(socket_path: str, parent: str, err: OSError) -> str:
    """What to tell a user whose socket folder refuses the socket or its ``.pid`` lock."""
    return (f"--socket-path {socket_path}: cannot create the socket and its lock file "
            f"{socket_path}.pid in {parent}: {err.strerror}; the daemon (uid {os.geteuid()}) "
            "needs a folder it can write, such as /run/user/UID or /tmp, or a listening socket "
            "passed with --fd")


def open_listener(config: Config) -> tuple[socket.socket, PidFile | None]:
    """The listening socket, created as the Rust daemon creates it, and its pid-file lock."""
    if config.fd is not None:
        try:
            return adopt_listener(config.fd), None
        except OSError as err:
            raise ConfigError(str(err)) from err
    assert config.socket_path is not None
    parent = os.path.dirname(config.socket_path) or "."
    if not os.path.isdir(parent):
        raise ConfigError(f"--socket-path {config.socket_path}: folder {parent} does not exist")
    gid = None
    if config.socket_group:
        try:
            gid = grp.getgrnam(config.socket_group).gr_gid
        except KeyError:
            raise ConfigError(f"--socket-group {config.socket_group}: no such group") from None
    try:
        pidfile = PidFile(config.socket_path + ".pid")
    except OSError as err:
        raise ConfigError(_unwritable_socket_folder(config.socket_path, parent, err)) from err
    previous = os.umask(0o007 if gid is not None else 0o077)
    try:
        listener = listen_at(config.socket_path)
    except OSError as err:
        pidfile.release()
        if err.errno in _UNWRITABLE:
            raise ConfigError(_unwritable_socket_folder(config.socket_path, parent, err)) from err
        raise ConfigError(f"--socket-path {config.socket_path}: cannot listen: {err}") from err
    finally:
        os.umask(previous)
    if gid is not None:
        os.chown(config.socket_path, -1, gid)
    return listener, pidfile


class SocketFiles:
    """The socket and its pid file, removed at exit through a descriptor of their folder taken
    before the sandbox.

    After the namespace sandbox's ``pivot_root`` the socket's path names a file in the shared
    folder, in the child and in the waiting parent alike (they share the mount namespace), and
    in a chroot too: removing by path could delete a guest's file.  A sandboxed child holds no
    descriptor of a host folder at all (:meth:`forget`), so only the process that still has
    one (no sandbox, or the namespace parent) removes the files.
    """

    def __init__(self, socket_path: str, pidfile: PidFile) -> None:
        folder = os.path.dirname(socket_path) or "."
        self._folder: int | None = os.open(folder, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        self._names = (os.path.basename(socket_path), os.path.basename(pidfile.path))
        self._pidfile = pidfile

    def forget(self) -> None:
        """Close the folder's descriptor; the files stay (the lock stays held until exit)."""
        if self._folder is not None:
            os.close(self._folder)
            self._folder = None

    def remove(self) -> None:
        """Remove both files if this process still may, and give up the lock."""
        if self._folder is not None:
            for name in self._names:
                try:
                    os.unlink(name, dir_fd=self._folder)
                except FileNotFoundError:
                    pass
                except OSError as err:
                    log.warning("cannot remove %s: %s", name, err)
            self.forget()
        self._pidfile.close()


def drop_supplementary_groups() -> None:
    """Forget every supplementary group when we may (root); CVE-2022-0358."""
    if os.geteuid() != 0:
        return
    try:
        os.setgroups([])
    except PermissionError as err:
        log.warning("cannot drop supplementary groups: %s", err)


def run(config: Config) -> int:
    """Start, serve one front-end, and return the exit status."""
    signal.signal(signal.SIGTERM, _exit_on_signal)
    signal.signal(signal.SIGHUP, _exit_on_signal)
    if native.lib is None and os.environ.get("VIRTIOFSD_PURE_PYTHON") != "1":
        log.warning("the compiled request path (virtiofsd.native) is not built, so requests "
                    "take the slower Python path; reinstall with a C compiler and the Python "
                    "headers present (pip install .)")
    pm = make_plugin_manager(config)
    listener, pidfile = open_listener(config)
    files = None
    try:
        if pidfile is not None:
            assert config.socket_path is not None
            files = SocketFiles(config.socket_path, pidfile)
        apply_rlimit_nofile(config.rlimit_nofile)
        drop_supplementary_groups()
        sandbox = enter_sandbox(config.sandbox, config.shared_dir, config.uid_map, config.gid_map)
        if files is not None and not sandbox.sees_host_paths:
            files.forget()
        if sandbox.child_pid is not None:
            listener.close()
            return wait_for_child(sandbox.child_pid)
        inside = dataclasses.replace(config, shared_dir=sandbox.root_dir)
        pm.hook.virtiofsd_configure(config=inside, pm=pm)
        try:
            drop_capabilities(inside, pm)
            apply_seccomp(inside, pm)
            router = FuseRouter(pm, inside)
            where = config.socket_path or f"fd {config.fd}"
            connection = accept_one(listener, f"vhost-user socket {where}")
            listener.close()
            try:
                clean = serve_connection(connection, router, tag=config.tag,
                                         num_request_queues=config.num_request_queues,
                                         thread_pool_size=config.thread_pool_size,
                                         device_state=_device_state_transfer(pm, router))
            finally:
                connection.close()
            if not clean:
                return 1
        finally:
            pm.hook.virtiofsd_unconfigure(config=inside)
    finally:
        listener.close()
        if files is not None:
            files.remove()
        elif pidfile is not None:
            pidfile.release()
    return 0


def _device_state_transfer(pm: Any, router: FuseRouter) -> DeviceStateTransfer:
    """Live migration: the file system saves and loads its state through the migration hooks;
    the FUSE session travels with it, so the guest goes on without a new INIT."""

    def save() -> bytes:
        data = pm.hook.virtiofsd_migration_save(session=router.session)
        if data is None:
            raise RuntimeError("no plugin can save the file system state for migration")
        return data

    def load(data: bytes) -> None:
        session = pm.hook.virtiofsd_migration_load(data=data)
        if session is None:
            raise RuntimeError("no plugin can load the file system state for migration")
        router.restore_session(session)

    def resumed() -> None:
        pm.hook.virtiofsd_migration_resumed()

    return DeviceStateTransfer(save, load, resumed)

