"""RLIMIT_NOFILE sizing for ``--rlimit-nofile``, with the Rust daemon's default and fallback.

The guest can make the daemon hold one file descriptor per inode it knows, so the default asks
for min(1,000,000, /proc/sys/fs/nr_open).  When that is refused (the hard limit is lower and we
lack CAP_SYS_RESOURCE), the default falls back to the hard limit with a warning; an explicit value
that cannot be set is an error.  A limit in force below :data:`LOW_NOFILE`, however it came
about, is reported with what to do: it is the first thing a large guest tree runs into.
"""

from __future__ import annotations

import logging
import resource

from virtiofsd.errors import ConfigError

log = logging.getLogger(__name__)

DEFAULT_CEILING = 1_000_000
#: Below this many descriptors a guest walking an ordinary tree (a kernel checkout: ~80,000
#: files) soon gets "Too many open files".
LOW_NOFILE = 4096
NR_OPEN_PATH = "/proc/sys/fs/nr_open"


def default_target(nr_open_path: str = NR_OPEN_PATH) -> int:
    """min(1,000,000, nr_open), or 1,000,000 when nr_open cannot be read."""
    try:
        with open(nr_open_path) as handle:
            return min(DEFAULT_CEILING, int(handle.read()))
    except (OSError, ValueError) as err:
        log.debug("cannot read %s (%s); assuming %d", nr_open_path, err, DEFAULT_CEILING)
        return DEFAULT_CEILING


def apply_rlimit_nofile(requested: int | None) -> int:
    """Set RLIMIT_NOFILE per ``--rlimit-nofile``; returns the soft limit in force afterwards."""
    limit = _set_rlimit_nofile(requested)
    if limit < LOW_NOFILE:
        log.warning("only %d file descriptors may be open: the daemon holds one for every file "
                    "the guest has open, and for every file it has looked up where no file "
                    "handle can be used (--inode-file-handles=never, file systems without "
                    "handles), so the guest may soon get 'Too many open files'; raise the hard "
                    "limit (ulimit -Hn, LimitNOFILE= in a systemd unit) and pass "
                    "--rlimit-nofile, or leave it out to take the hard limit", limit)
    return limit


def _set_rlimit_nofile(requested: int | None) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if requested == 0:
        return soft
    if requested is None:
        if soft >= DEFAULT_CEILING:
            return soft
        target = default_target()
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, target))
            return target
        except (OSError, ValueError):
            log.warning("Failure when trying to set the limit to %d, the hard limit (%d) of open "
                        "file descriptors is used instead.", target, hard)
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            return hard
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (requested, requested))
    except (OSError, ValueError) as err:
        raise ConfigError(f"--rlimit-nofile {requested}: cannot set the limit of open file "
                          f"descriptors (hard limit {hard}): {err}") from err
    return requested
