"""The daemon's configuration: one frozen value built by the CLI and read by every plugin.

Option names and defaults are the Rust virtiofsd's (its README is the reference).  Enum values are
the words a user types, and for the plugin slots they are also the entry-point names.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any


class CacheMode(str, enum.Enum):
    """``--cache``: how long the guest may trust what it cached."""

    AUTO = "auto"
    ALWAYS = "always"
    METADATA = "metadata"
    NEVER = "never"


class Sandbox(str, enum.Enum):
    NAMESPACE = "namespace"
    CHROOT = "chroot"
    NONE = "none"


class Seccomp(str, enum.Enum):
    NONE = "none"
    KILL = "kill"
    LOG = "log"
    TRAP = "trap"


#: Entry and attribute timeouts per cache mode, in seconds (the Rust daemon's values).
CACHE_TIMEOUTS = {
    CacheMode.NEVER: 0.0,
    CacheMode.AUTO: 1.0,
    CacheMode.ALWAYS: 86400.0,
    CacheMode.METADATA: 86400.0,
}


#: ``Config.thread_pool_size`` of ``--thread-pool-size auto``: a pool used only when it pays.
THREAD_POOL_AUTO = -1


@dataclasses.dataclass(frozen=True)
class Config:
    """Every command-line option, parsed and validated; see ``virtiofsd --help``."""

    shared_dir: str
    socket_path: str | None = None
    fd: int | None = None
    socket_group: str | None = None
    tag: str | None = None
    thread_pool_size: int = 0
    #: Request queues offered to the front-end (QEMU's vhost-user-fs-pci num-request-queues).
    num_request_queues: int = 1
    cache: CacheMode = CacheMode.AUTO
    allow_mmap: bool = False
    readdirplus: bool = True
    writeback: bool = False
    allow_direct_io: bool = False
    readonly: bool = False
    announce_submounts: bool = True
    inode_file_handles: str = "prefer"
    preserve_noatime: bool = False
    killpriv_v2: bool = False
    #: POSIX record locks held on the host (``-o posix_lock``); off by default, as in the Rust
    #: daemon: the guest kernel keeps them (docs/locks-and-opcodes.md says why).
    posix_lock: bool = False
    #: flock(2) locks held on the host (``-o flock``); off by default, like ``posix_lock``.
    flock: bool = False
    xattr: bool = False
    posix_acl: bool = False
    security_label: bool = False
    xattrmap: str | None = None
    sandbox: Sandbox = Sandbox.NAMESPACE
    seccomp: Seccomp = Seccomp.KILL
    modcaps: str | None = None
    rlimit_nofile: int | None = None
    uid_map: tuple[str, ...] = ()
    gid_map: tuple[str, ...] = ()
    translate_uid: tuple[str, ...] = ()
    translate_gid: tuple[str, ...] = ()
    migration_mode: str = "find-paths"
    migration_on_error: str = "abort"
    migration_verify_handles: bool = False
    migration_confirm_paths: bool = False
    log_level: str = "info"
    syslog: bool = False
    #: Extra plugins named with ``-p`` (entry points of the group ``virtiofsd.plugins``).
    extra_plugins: tuple[str, ...] = ()
    #: Free-form settings for third-party plugins.
    plugin_options: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def timeout(self) -> float:
        """Entry and attribute timeout the cache mode gives, in seconds."""
        return CACHE_TIMEOUTS[self.cache]
