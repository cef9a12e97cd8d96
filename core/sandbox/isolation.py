"""``--sandbox namespace|chroot|none``: make the shared folder the daemon's ``/``.

namespace (the default), the Rust virtiofsd's steps:

1. ``unshare`` new mount, pid and net namespaces (plus a user namespace when not root, with the
   caller's uid and gid mapped to themselves, or the ``--uid-map``/``--gid-map`` ranges written
   by :mod:`virtiofsd.sandbox.userns`; when they map namespace id 0, the daemon becomes it);
2. fork: the child is pid 1 of the new pid namespace and serves; the parent closes the listening
   socket, drops every capability, waits, exits with the child's status, and only then removes
   the socket and the pid file, through a descriptor of their folder taken before (the parent
   shares the child's mount namespace, so after the pivot their paths lead into the shared
   folder for it too);
3. in the child: make every mount a slave of the host's (no change of ours propagates out),
   mount a fresh ``/proc`` and bind ``/proc/self/fd`` over it (so ``..`` from the fd folder
   leads nowhere), bind the shared folder onto itself, ``pivot_root`` into it and detach the old
   root.  What remains visible is the shared folder, as ``/``.

chroot: ``chroot`` into the shared folder, for containers whose runtime already set up
namespaces (and where ``unshare`` is usually refused); root only.

none: nothing; the shared folder keeps its path.

The listening socket was created before and is accepted inside the sandbox.  The two ``/proc``
descriptors the daemon still needs are opened before ``/proc`` disappears and handed to
:mod:`virtiofsd.sandbox.procfs`.
"""

from __future__ import annotations

import dataclasses
import importlib.machinery
import logging
import os
import select
import signal
import sys
from collections.abc import Sequence

import prctl

from virtiofsd.config import Sandbox
from virtiofsd.errors import ConfigError
from virtiofsd.sandbox import procfs
from virtiofsd.sandbox.capabilities import apply_capabilities
from virtiofsd.sandbox.userns import (MapWriter, NamespaceIdRange, check_namespace_maps, maps_root,
                                      parse_namespace_map)
from virtiofsd.sys import ffi

log = logging.getLogger(__name__)

_DIRECTORY = os.O_DIRECTORY | os.O_RDONLY | os.O_CLOEXEC


@dataclasses.dataclass(frozen=True)
class SandboxResult:
    """Where :func:`enter_sandbox` left this process.

    :ivar root_dir: the shared folder as this process now sees it (``/`` in a sandbox).
    :ivar child_pid: in the namespace sandbox's waiting parent, the serving child; else None.
    :ivar sees_host_paths: False in a sandboxed process that serves: it must hold no descriptor
        of a host folder (one would lead out of the sandbox).  The namespace parent shares the
        child's mount namespace, so host *paths* lead into the shared folder there too.
    """

    root_dir: str
    child_pid: int | None = None
    sees_host_paths: bool = True

    @property
    def is_waiting_parent(self) -> bool:
        return self.child_pid is not None


def enter_sandbox(mode: Sandbox, shared_dir: str, uid_map: Sequence[str] = (),
                  gid_map: Sequence[str] = ()) -> SandboxResult:
    """Isolate this process per ``mode``; in namespace mode, returns twice (parent and child).
    ``uid_map``/``gid_map`` are the ``--uid-map``/``--gid-map`` values (namespace mode, not root).

    An exception leaves this process with its host view; a namespace child that fails half-way
    exits with status 1 instead, which its parent returns.

    :raises ConfigError: the sandbox cannot be set up (the message says which step and why).
    """
    shared_dir = os.path.realpath(shared_dir)
    if not os.path.isdir(shared_dir):
        raise ConfigError(f"--shared-dir {shared_dir}: not a folder")
    uid_ranges = [parse_namespace_map(value) for value in uid_map]
    gid_ranges = [parse_namespace_map(value) for value in gid_map]
    for option, ranges in (("--uid-map", uid_ranges), ("--gid-map", gid_ranges)):
        check_namespace_maps(option, ranges, os.geteuid(), mode is Sandbox.NAMESPACE)
    try:
        if mode is Sandbox.NAMESPACE:
            return _enter_namespace(shared_dir, uid_ranges, gid_ranges)
        if mode is Sandbox.CHROOT:
            return _enter_chroot(shared_dir)
    except OSError as err:
        raise ConfigError(f"--sandbox {mode.value}: {err}") from err
    return SandboxResult(root_dir=shared_dir)


def _enter_chroot(shared_dir: str) -> SandboxResult:
    if os.geteuid() != 0:
        raise ConfigError("--sandbox chroot needs root (use --sandbox namespace instead)")
    proc_self_fd = os.open("/proc/self/fd", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    mountinfo = os.open("/proc/self/mountinfo", os.O_RDONLY | os.O_CLOEXEC)
    procfs.hold(proc_self_fd, mountinfo)
    os.chroot(shared_dir)
    os.chdir("/")
    forbid_imports_from_files()
    log.info("sandbox: chroot into %s", shared_dir)
    return SandboxResult(root_dir="/", sees_host_paths=False)


def _enter_namespace(shared_dir: str, uid_map: list[NamespaceIdRange],
                     gid_map: list[NamespaceIdRange]) -> SandboxResult:
    flags = ffi.CLONE_NEWPID | ffi.CLONE_NEWNS | ffi.CLONE_NEWNET
    writer = None
    if os.geteuid() != 0:
        flags |= ffi.CLONE_NEWUSER
        writer = MapWriter.start(uid_map, gid_map)
    try:
        try:
            ffi.unshare(flags)
        except PermissionError as err:
            raise ConfigError(f"--sandbox namespace: cannot create namespaces ({err}); in a "
                              "container use --sandbox chroot, or --sandbox none") from err
    except BaseException:
        if writer is not None:
            writer.abandon()
        raise
    if writer is not None:
        writer.finish()
    # The child must not outlive its parent.  Its parent is outside its pid namespace (getppid
    # says 0), so a pidfd tells whether the parent died before PDEATHSIG was armed.
    parent = os.pidfd_open(os.getpid())
    child = os.fork()
    if child:
        os.close(parent)
        # The child's pivot_root moves this process's root too (one mount namespace).
        forbid_imports_from_files()
        return SandboxResult(root_dir="/", child_pid=child)
    prctl.set_pdeathsig(signal.SIGTERM)
    parent_gone = select.select([parent], [], [], 0)[0]
    os.close(parent)
    if parent_gone:
        os._exit(1)
    try:
        if writer is not None:
            # Only the serving child: the waiting parent keeps the host user's ids, which own
            # the socket's folder, so it can still remove the socket at the end.
            _become_namespace_root(uid_map, gid_map)
        _pivot_into(shared_dir)
    except BaseException as err:
        # Half-pivoted: no host path can be trusted any more, so nothing may be cleaned up by
        # name; the parent removes the socket and reports the status.
        log.error("--sandbox namespace: cannot make %s the root: %s", shared_dir, err)
        os._exit(1)
    forbid_imports_from_files()
    log.info("sandbox: namespace, %s is now /", shared_dir)
    return SandboxResult(root_dir="/", sees_host_paths=False)


def _become_namespace_root(uid_map: list[NamespaceIdRange],
                           gid_map: list[NamespaceIdRange]) -> None:
    """Take namespace id 0 where the maps provide it, as the Rust daemon does: guest root's
    files then land as the host id mapped to 0, and other guest ids are switched to from it."""
    if maps_root(gid_map):
        os.setresgid(0, 0, 0)
    if maps_root(uid_map):
        os.setresuid(0, 0, 0)
        if maps_root(gid_map):
            # newgidmap left setgroups allowed: forget the user's groups (CVE-2022-0358).
            os.setgroups([])
    log.info("sandbox: user namespace, running as uid %d gid %d in it", os.geteuid(),
             os.getegid())


def _pivot_into(shared_dir: str) -> None:
    """The mount steps in the new mount namespace (see the module docstring)."""
    proc_self = os.open("/proc/self", os.O_PATH | os.O_CLOEXEC)
    try:
        ffi.mount(None, "/", None, ffi.MS_SLAVE | ffi.MS_REC)
        ffi.mount("proc", "/proc", "proc",
                  ffi.MS_NODEV | ffi.MS_NOEXEC | ffi.MS_NOSUID | ffi.MS_RELATIME)
        ffi.mount("/proc/self/fd", "/proc", None, ffi.MS_BIND)
        proc_self_fd = os.open("/proc", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        ffi.mount(shared_dir, shared_dir, None, ffi.MS_BIND | ffi.MS_REC)
        old_root = os.open("/", _DIRECTORY)
        new_root = os.open(shared_dir, _DIRECTORY)
        try:
            os.fchdir(new_root)
            ffi.pivot_root(".", ".")
            os.fchdir(old_root)
            ffi.mount(None, ".", None, ffi.MS_SLAVE | ffi.MS_REC)
            ffi.umount2(".", ffi.MNT_DETACH)
            os.fchdir(new_root)
        finally:
            os.close(old_root)
            os.close(new_root)
        mountinfo = os.open("mountinfo", os.O_RDONLY | os.O_CLOEXEC, dir_fd=proc_self)
    finally:
        os.close(proc_self)
    procfs.hold(proc_self_fd, mountinfo)


class _NoImportFromFiles:
    """A meta-path finder, first in line, that refuses every module not built into the
    interpreter: inside the sandbox the interpreter's paths (``sys.path``, packages'
    ``__path__``) lead into the shared folder, where the guest could plant a module that a
    late import would run as root."""

    @staticmethod
    def find_spec(name: str, path: object = None, target: object = None) -> None:
        for importer in (importlib.machinery.BuiltinImporter, importlib.machinery.FrozenImporter):
            if importer.find_spec(name) is not None:
                return None
        raise ImportError(f"module {name} was not imported before the sandbox: inside it, its "
                          "path would lead into the shared folder (import it at module level)",
                          name=name)


def forbid_imports_from_files() -> None:
    """From now on, only modules already imported (or built in) can be imported."""
    sys.meta_path.insert(0, _NoImportFromFiles())
    sys.path_importer_cache.clear()


def wait_for_child(child: int) -> int:
    """The namespace sandbox's parent: hold no capability, wait for the child, and return the
    exit status to exit with (128 + the signal number when a signal killed it)."""
    drop_every_capability()
    _, status = os.waitpid(child, 0)
    code = os.waitstatus_to_exitcode(status)
    if code < 0:
        name = signal.Signals(-code).name
        hint = " (a system call outside the seccomp allow-list?)" if -code == signal.SIGSYS else ""
        log.error("the sandboxed daemon (pid %d) was killed by %s%s", child, name, hint)
        return 128 - code
    return code


def drop_every_capability() -> None:
    """Empty the effective, permitted, inheritable and (when allowed) bounding sets."""
    apply_capabilities(frozenset())
