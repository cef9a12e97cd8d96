"""The ``virtiofsd`` command line: the Rust virtiofsd's options, names and defaults.

Parsing turns argv into a frozen :class:`virtiofsd.config.Config`.  Three rules shape it:

- Same words as the Rust daemon, plus the legacy ``-o`` forms of the C daemon's manual.
- No option is accepted and ignored: a legacy ``-o`` form that has no meaning here is refused,
  naming it.  A *default* whose plugin is not installed (file handles, ``prefer``) falls back to
  the nearest installed behaviour with one warning line at start, so that
  ``virtiofsd --socket-path S --shared-dir D`` works.
- Plugin slots are chosen by entry-point name; a value whose plugin is not installed is refused
  with the list of installed ones.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Sequence

from virtiofsd import __version__
from virtiofsd.config import THREAD_POOL_AUTO, CacheMode, Config, Sandbox, Seccomp
from virtiofsd.errors import ConfigError
from virtiofsd.idmap import parse_translation
from virtiofsd.manager import GROUP_INODE_STORE, entry_point_names
from virtiofsd.sandbox.capabilities import parse_modcaps
from virtiofsd.sandbox.userns import parse_namespace_map

log = logging.getLogger(__name__)

#: Aliases of slot values: the word a user may type -> the entry-point name.
INODE_STORE_ALIASES = {"fallback": "prefer"}
INODE_STORE_WORDS = ("never", "prefer", "mandatory", "fallback")

LOG_LEVELS = ("error", "warn", "info", "debug", "trace", "off")

#: ``--print-capabilities`` (vhost-user.json "backend program conventions", type fs).
CAPABILITIES = {"type": "fs", "features": ["migrate-precopy", "separate-options"]}


class CompatOptionError(ConfigError):
    """A ``-o`` option is unknown, malformed, or refused."""


#: Each request queue is served by a thread of its own.
MAX_REQUEST_QUEUES = 64


def _thread_pool_size(value: str) -> int:
    """An integer as for the Rust daemon, or ``auto`` (:data:`THREAD_POOL_AUTO`)."""
    if value == "auto":
        return THREAD_POOL_AUTO
    try:
        size = int(value)
    except ValueError:
        size = -1
    if size < 0:
        raise argparse.ArgumentTypeError(f"invalid value {value!r}: 0 or more, or 'auto'")
    return size


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser; defaults of options that need to know "given or not" are ``None``."""
    p = argparse.ArgumentParser(
        prog="virtiofsd",
        description="Launch a virtiofsd backend (virtio-fs vhost-user device daemon).",
        usage="virtiofsd --shared-dir <SHARED_DIR> --socket-path <SOCKET_PATH> [OPTIONS]",
    )
    add = p.add_argument
    add("--shared-dir", help="Shared directory path")
    add("--tag", help="The tag that the virtio device advertises (enables VHOST_USER_PROTOCOL_F_"
        "CONFIG; QEMU 7.1 to 8.0 crash on it, QEMU 8.1+ ignore it)")
    add("--socket", dest="socket_deprecated", help="vhost-user socket path [deprecated]")
    add("--socket-path", help="vhost-user socket path")
    add("--socket-group", help="Name of group for the vhost-user socket")
    add("--fd", type=int, help="File descriptor for the listening (not yet connected) socket")
    add("--thread-pool-size", type=_thread_pool_size, default=0,
        help='Maximum thread pool size. A value of "0" disables the pool; "auto" serves small '
             'requests on the queue thread and hands blocking ones, and big ones while others '
             'wait, to a pool of one thread per CPU (2 to 8) [default: 0]')
    add("--num-request-queues", type=int, default=1,
        help="Request queues offered to the front-end, 1 to 64; give QEMU's vhost-user-fs "
             "device the same num-request-queues (the Rust daemon offers 1) [default: 1]")
    add("--xattr", action="store_true", default=None, help="Enable support for extended attributes")
    add("--posix-acl", action="store_true", default=None,
        help="Enable support for posix ACLs (implies --xattr)")
    add("--xattrmap", help="Add custom rules for translating extended attributes between host "
        "and guest (e.g. :map::user.virtiofs.:)")
    add("--sandbox", choices=[s.value for s in Sandbox],
        help="Sandbox mechanism to isolate the daemon process (namespace, chroot, none) "
        "[default: namespace]")
    add("--readonly", action="store_true", default=False,
        help="Prevent the guest from making modifications to the filesystem")
    add("--seccomp", choices=[s.value for s in Seccomp],
        help="Action to take when seccomp finds a not allowed syscall (none, kill, log, trap) "
        "[default: kill]")
    add("--announce-submounts", dest="announce_submounts", action="store_true", default=None,
        help="Tell the guest which directories are mount points [default]")
    add("--no-announce-submounts", dest="announce_submounts", action="store_false",
        help="Do not tell the guest which directories are mount points")
    add("--inode-file-handles", metavar="{never,prefer,mandatory}",
        help="When to use file handles to reference inodes instead of O_PATH file descriptors "
        '(never, prefer, mandatory; "fallback" is a deprecated alias for "prefer") '
        "[default: prefer]")
    add("--cache", choices=[c.value for c in CacheMode],
        help="The caching policy the file system should use (auto, always, never, metadata) "
        "[default: auto]")
    add("--allow-mmap", action="store_true", default=None,
        help="With --cache={metadata,never}, allow shared files to be mmap'd")
    add("--no-readdirplus", action="store_true", default=None,
        help="Disable support for READDIRPLUS operations")
    add("--writeback", action="store_true", default=None, help="Enable writeback cache")
    add("--allow-direct-io", action="store_true", default=None,
        help="Honor the O_DIRECT flag passed down by guest applications")
    add("--print-capabilities", action="store_true",
        help="Print vhost-user.json backend program capabilities and exit")
    add("--modcaps", help="Modify the list of capabilities, e.g., --modcaps=+sys_admin:-chown")
    add("--log-level", choices=LOG_LEVELS, help="Log level (error, warn, info, debug, trace, off) "
        "[default: info]")
    add("--syslog", action="store_true", help="Log to syslog [default: stderr]")
    add("--rlimit-nofile", type=int, help="Set maximum number of file descriptors (0 leaves "
        "rlimit unchanged) [default: min(1000000, '/proc/sys/fs/nr_open')]")
    add("-o", dest="compat_options", action="append", default=[], metavar="COMPAT_OPTIONS",
        help="Options in a format compatible with the legacy implementation [deprecated]")
    add("-d", dest="debug", action="store_true", help='Set log level to "debug" [deprecated]')
    add("--no-killpriv-v2", dest="killpriv_v2", action="store_false", default=None,
        help="Disable KILLPRIV V2 support [default]")
    add("--killpriv-v2", dest="killpriv_v2", action="store_true", help="Enable KILLPRIV V2 support")
    add("-f", dest="foreground", action="store_true",
        help="Compatibility option that has no effect [deprecated]")
    add("--security-label", action="store_true", default=None,
        help="Enable security label support (implies --xattr)")
    add("--uid-map", action="append", help="Map a range of UIDs from the host into the namespace, "
        "given as :namespace_uid:host_uid:count:")
    add("--gid-map", action="append", help="Map a range of GIDs from the host into the namespace, "
        "given as :namespace_gid:host_gid:count:")
    add("--translate-uid", action="append", help="Describe how to translate UIDs between guest and "
        "host, given as '<type>:<source base>:<target base>:<count>'")
    add("--translate-gid", action="append", help="Same as '--translate-uid', but for GIDs")
    add("--preserve-noatime", action="store_true", default=False,
        help="Preserve O_NOATIME behavior instead of clearing it")
    add("--migration-mode", choices=["find-paths", "file-handles"],
        help="How to represent inodes for migration [default: find-paths]")
    add("--migration-on-error", choices=["abort", "guest-error"],
        help="How the destination reacts to migration errors [default: abort]")
    add("--migration-verify-handles", action="store_true", default=None,
        help="Make the destination verify it opened the very same inodes (find-paths only)")
    add("--migration-confirm-paths", action="store_true", default=None,
        help="Double-check inode paths at switch-over (find-paths only)")
    add("--plugin", dest="plugins", action="append", default=[], metavar="NAME",
        help="Load the third-party plugin NAME (entry point of the group virtiofsd.plugins); "
        "nothing else is loaded unless named")
    add("-V", "--version", action="version", version=f"virtiofsd {__version__}")
    # Locks have no long option (as in the Rust daemon): only -o [no_]posix_lock, -o [no_]flock.
    p.set_defaults(posix_lock=False, flock=False)
    return p


# --- Legacy -o options -----------------------------------------------------------------------

_COMPAT_FLAGS = {
    # -o word: (attribute, value)
    "xattr": ("xattr", True), "no_xattr": ("xattr", False),
    "readdirplus": ("no_readdirplus", False), "no_readdirplus": ("no_readdirplus", True),
    "writeback": ("writeback", True), "no_writeback": ("writeback", False),
    "allow_direct_io": ("allow_direct_io", True), "no_allow_direct_io": ("allow_direct_io", False),
    "posix_acl": ("posix_acl", True), "no_posix_acl": ("posix_acl", False),
    "security_label": ("security_label", True), "no_security_label": ("security_label", False),
    "killpriv_v2": ("killpriv_v2", True), "no_killpriv_v2": ("killpriv_v2", False),
    "announce_submounts": ("announce_submounts", True),
    "posix_lock": ("posix_lock", True), "no_posix_lock": ("posix_lock", False),
    "flock": ("flock", True), "no_flock": ("flock", False),
}
_COMPAT_REFUSED = {
    "allow_root": "allow_root has no meaning for virtio-fs",
}
_COMPAT_CACHE = {"auto": "auto", "always": "always", "none": "never", "never": "never",
                 "metadata": "metadata"}


def apply_compat_options(args: argparse.Namespace, option_strings: Sequence[str]) -> None:
    """Fold ``-o a,b=c`` options into ``args``, as the Rust daemon translates them."""
    for option_string in option_strings:
        for item in filter(None, (part.strip() for part in option_string.split(","))):
            key, has_value, value = item.partition("=")
            if not has_value:
                if key in _COMPAT_FLAGS:
                    attribute, flag_value = _COMPAT_FLAGS[key]
                    setattr(args, attribute, flag_value)
                elif key in _COMPAT_REFUSED:
                    raise CompatOptionError(f"-o {key}: {_COMPAT_REFUSED[key]}")
                else:
                    raise CompatOptionError(f"-o {key}: unknown option")
                continue
            if key == "source":
                args.shared_dir = value
            elif key == "cache":
                if value not in _COMPAT_CACHE:
                    raise CompatOptionError(f"-o cache={value}: expected auto, always, none or "
                                            "metadata")
                args.cache = _COMPAT_CACHE[value]
            elif key in ("loglevel", "log_level"):
                level = {"err": "error", "warning": "warn"}.get(value, value)
                if level not in LOG_LEVELS:
                    raise CompatOptionError(f"-o {key}={value}: unknown log level")
                args.log_level = level
            elif key == "sandbox":
                if value not in ("namespace", "chroot", "none"):
                    raise CompatOptionError(f"-o sandbox={value}: expected namespace or chroot")
                args.sandbox = value
            elif key == "xattrmap":
                args.xattrmap = value
            elif key == "modcaps":
                args.modcaps = value
            elif key == "timeout":
                raise CompatOptionError("-o timeout= is not supported; use --cache instead")
            else:
                raise CompatOptionError(f"-o {key}={value}: unknown option")


# --- From arguments to Config ---------------------------------------------------------------


def _resolve_inode_store(args: argparse.Namespace, fallbacks: list[str]) -> str:
    if args.inode_file_handles is None:
        installed = entry_point_names(GROUP_INODE_STORE)
        if "prefer" in installed:
            return "prefer"
        fallbacks.append("file handles (--inode-file-handles=prefer): using O_PATH file "
                         "descriptors (never)")
        return "never"
    word = args.inode_file_handles
    if word not in INODE_STORE_WORDS:
        raise ConfigError(f"--inode-file-handles={word}: expected never, prefer or mandatory")
    name = INODE_STORE_ALIASES.get(word, word)
    installed = entry_point_names(GROUP_INODE_STORE)
    if name not in installed:
        raise ConfigError(f"--inode-file-handles={word} is not implemented yet (no inode store "
                          f"plugin named {name!r}; installed: {', '.join(installed) or 'none'})")
    return name


def _xattr_options(args: argparse.Namespace) -> dict[str, Any]:
    """``--posix-acl``, ``--security-label`` and ``--xattrmap`` each imply ``--xattr``, as in the
    Rust daemon (whatever the order, and even after ``-o no_xattr``)."""
    if args.xattrmap is not None and not args.xattrmap.strip():
        raise ConfigError("--xattrmap: no rule given")
    posix_acl = bool(args.posix_acl)
    security_label = bool(args.security_label)
    return {
        "xattr": bool(args.xattr) or posix_acl or security_label or args.xattrmap is not None,
        "posix_acl": posix_acl,
        "security_label": security_label,
        "xattrmap": args.xattrmap,
    }


def config_from_args(args: argparse.Namespace) -> tuple[Config, list[str]]:
    """Validate parsed arguments; returns the config and the defaults that fell back."""
    apply_compat_options(args, args.compat_options)
    if (args.translate_uid or args.translate_gid) and args.posix_acl:
        raise ConfigError("--translate-uid and --translate-gid cannot be used with --posix-acl: "
                          "ACLs name host ids the guest would see untranslated")
    fallbacks: list[str] = []
    if args.socket_deprecated and not args.socket_path:
        args.socket_path = args.socket_deprecated
    if args.print_capabilities:
        return Config(shared_dir=""), fallbacks
    if not args.shared_dir:
        raise ConfigError("--shared-dir is required")
    if (args.socket_path is None) == (args.fd is None):
        raise ConfigError("exactly one of --socket-path and --fd is required")
    if args.socket_group and args.fd is not None:
        raise ConfigError("--socket-group only applies to --socket-path")
    if args.rlimit_nofile is not None and args.rlimit_nofile < 0:
        raise ConfigError("--rlimit-nofile must be 0 or more")
    if not 1 <= args.num_request_queues <= MAX_REQUEST_QUEUES:
        raise ConfigError(f"--num-request-queues must be 1 to {MAX_REQUEST_QUEUES}")
    if args.tag is not None and not 0 < len(args.tag.encode()) <= 36:
        raise ConfigError("--tag must be 1 to 36 bytes long")
    shared_dir = os.path.abspath(args.shared_dir)
    if not os.path.isdir(shared_dir):
        raise ConfigError(f"--shared-dir {args.shared_dir}: not an existing directory")
    sandbox = Sandbox(args.sandbox or Sandbox.NAMESPACE.value)
    seccomp = Seccomp(args.seccomp or Seccomp.KILL.value)
    parse_modcaps(args.modcaps)
    inode_store = _resolve_inode_store(args, fallbacks)
    parse_translation(args.translate_uid or (), "uid")
    parse_translation(args.translate_gid or (), "gid")
    for option, values in (("--uid-map", args.uid_map), ("--gid-map", args.gid_map)):
        for value in values or ():
            try:
                parse_namespace_map(value)
            except ConfigError as err:
                raise ConfigError(f"{option}: {err}") from err
    migration_mode = args.migration_mode or "find-paths"
    if migration_mode == "file-handles":
        for option in ("migration_verify_handles", "migration_confirm_paths"):
            if getattr(args, option):
                raise ConfigError(f"--{option.replace('_', '-')} only applies to "
                                  "--migration-mode=find-paths (file handles need no check)")
    log_level = "debug" if args.debug else (args.log_level or "info")
    config = Config(
        shared_dir=shared_dir,
        socket_path=os.path.abspath(args.socket_path) if args.socket_path else None,
        fd=args.fd,
        socket_group=args.socket_group,
        tag=args.tag,
        thread_pool_size=args.thread_pool_size,
        num_request_queues=args.num_request_queues,
        cache=CacheMode(args.cache or "auto"),
        readdirplus=not args.no_readdirplus,
        writeback=bool(args.writeback),
        allow_direct_io=bool(args.allow_direct_io),
        readonly=args.readonly,
        announce_submounts=args.announce_submounts is not False,
        inode_file_handles=inode_store,
        preserve_noatime=args.preserve_noatime,
        allow_mmap=bool(args.allow_mmap),
        killpriv_v2=bool(args.killpriv_v2),
        posix_lock=args.posix_lock,
        flock=args.flock,
        migration_mode=migration_mode,
        migration_on_error=args.migration_on_error or "abort",
        migration_verify_handles=bool(args.migration_verify_handles),
        migration_confirm_paths=bool(args.migration_confirm_paths),
        sandbox=sandbox,
        seccomp=seccomp,
        modcaps=args.modcaps,
        rlimit_nofile=args.rlimit_nofile,
        log_level=log_level,
        syslog=args.syslog,
        extra_plugins=tuple(args.plugins),
        uid_map=tuple(args.uid_map or ()),
        gid_map=tuple(args.gid_map or ()),
        translate_uid=tuple(args.translate_uid or ()),
        translate_gid=tuple(args.translate_gid or ()),
        **_xattr_options(args),
    )
    return config, fallbacks


def parse_config(argv: Sequence[str] | None = None) -> tuple[Config, list[str], bool]:
    """argv -> (config, fallback notes, print_capabilities); exits with status 2 on bad input."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config, fallbacks = config_from_args(args)
    except ConfigError as err:
        parser.exit(2, f"virtiofsd: error: {err}\n")
    return config, fallbacks, bool(args.print_capabilities)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``virtiofsd`` command; returns the exit status."""
    config, fallbacks, print_capabilities = parse_config(argv)
    if print_capabilities:
        print(json.dumps(CAPABILITIES, indent=2))
        return 0
    from virtiofsd.log import setup_logging
    from virtiofsd.service import run

    setup_logging(config.log_level, config.syslog)
    if fallbacks:
        log.warning("not enforced yet: %s", "; ".join(fallbacks))
    try:
        return run(config)
    except ConfigError as err:
        log.error("%s", err)
        return 1


if __name__ == "__main__":
    sys.exit(main())
