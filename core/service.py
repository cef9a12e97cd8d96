"""The daemon's life, start to exit: the order of start-up steps matters, so it lives in one place.

1. Load the plugins the configuration selects, so that a missing one stops the daemon with a
   clear message before it listens (a front-end must never connect to a daemon about to fail).
2. Take the ``<socket>.pid`` lock; create the listening socket (umask 077, or 007 with
   ``--socket-group``, then chown to that group), or adopt ``--fd``.
3. Raise RLIMIT_NOFILE; drop supplementary groups (CVE-2022-0358: a guest must never create files
   with a group the daemon merely happened to be in).
4. Let every plugin configure itself (the file-system plugin sets the umask it needs: the
   passthrough sets 0, since the guest already applied its own).
5. Accept exactly one front-end connection and serve it; when the front-end goes away, stop and
   exit 0, as the Rust daemon does.
"""

from __future__ import annotations

import grp
import logging
import os
import signal
import socket
from typing import Any

from virtiofsd.config import Config
from virtiofsd.errors import ConfigError
from virtiofsd.fuse.router import FuseRouter
from virtiofsd.io.daemon import serve_connection
from virtiofsd.io.pidfile import PidFile
from virtiofsd.io.unix_socket import accept_one, adopt_listener, listen_at
from virtiofsd.limits import apply_rlimit_nofile
from virtiofsd.manager import make_plugin_manager

log = logging.getLogger(__name__)


def _exit_on_signal(signum: int, frame: Any) -> None:
    raise SystemExit(1)


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
    pidfile = PidFile(config.socket_path + ".pid")
    previous = os.umask(0o007 if gid is not None else 0o077)
    try:
        listener = listen_at(config.socket_path)
    except OSError as err:
        pidfile.release()
        raise ConfigError(f"--socket-path {config.socket_path}: cannot listen: {err}") from err
    finally:
        os.umask(previous)
    if gid is not None:
        os.chown(config.socket_path, -1, gid)
    return listener, pidfile


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
    pm = make_plugin_manager(config)
    listener, pidfile = open_listener(config)
    try:
        apply_rlimit_nofile(config.rlimit_nofile)
        drop_supplementary_groups()
        pm.hook.virtiofsd_configure(config=config, pm=pm)
        try:
            router = FuseRouter(pm, config)
            where = config.socket_path or f"fd {config.fd}"
            connection = accept_one(listener, f"vhost-user socket {where}")
            listener.close()
            try:
                clean = serve_connection(connection, router, tag=config.tag,
                                         num_request_queues=config.num_request_queues,
                                         thread_pool_size=config.thread_pool_size)
            finally:
                connection.close()
            if not clean:
                return 1
        finally:
            pm.hook.virtiofsd_unconfigure(config=config)
    finally:
        listener.close()
        if config.socket_path is not None:
            _unlink_quietly(config.socket_path)
        if pidfile is not None:
            pidfile.release()
    return 0


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
