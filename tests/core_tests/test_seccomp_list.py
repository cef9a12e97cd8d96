"""Which system calls the seccomp filter allows for a configuration: the base list every
configuration needs, and the calls of a feature only where the feature is on.

Built the way the daemon builds it (:func:`virtiofsd.sandbox.seccomp.allowed_syscalls` over the
plugins the configuration selects); the filter's effect on a running daemon is tested in
test_sandbox.py.
"""

from __future__ import annotations

import pytest
from virtiofsd.config import Config
from virtiofsd.manager import make_plugin_manager
from virtiofsd.sandbox.seccomp import allowed_syscalls
from virtiofsd.sandbox.syscalls import (
    ARGUMENT_RULES,
    BASE,
    ERRNO_UNLESS_ALLOWED,
    FILE_HANDLE_CALLS,
    FLOCK_CALLS,
    XATTR_CALLS,
)


def filter_names(**options: object) -> set[str]:
    config = Config(shared_dir="/", **options)
    return allowed_syscalls(config, make_plugin_manager(config))


@pytest.mark.parametrize("options, handles", [
    ({"inode_file_handles": "never"}, set()),
    ({"inode_file_handles": "prefer"}, FILE_HANDLE_CALLS),
    ({"inode_file_handles": "mandatory"}, FILE_HANDLE_CALLS),
    ({"inode_file_handles": "never", "migration_mode": "file-handles"}, FILE_HANDLE_CALLS),
    ({"inode_file_handles": "never", "migration_verify_handles": True}, {"name_to_handle_at"}),
    ({"inode_file_handles": "never", "modcaps": "+dac_read_search"}, FILE_HANDLE_CALLS),
])
def test_file_handle_calls_follow_the_options_that_use_file_handles(options, handles):
    assert filter_names(**options) & FILE_HANDLE_CALLS == handles


@pytest.mark.parametrize("options, xattrs", [
    ({}, set()),
    ({"xattr": True}, XATTR_CALLS),
])
def test_xattr_calls_follow_xattr(options, xattrs):
    assert filter_names(**options) & XATTR_CALLS == xattrs


@pytest.mark.parametrize("options, flock", [
    ({}, set()),
    ({"posix_lock": True}, set()),
    ({"flock": True}, FLOCK_CALLS),
])
def test_flock_follows_the_flock_option(options, flock):
    assert filter_names(**options) & FLOCK_CALLS == flock


def test_the_base_list_holds_no_feature_call_and_no_call_with_a_rule():
    """A name in the base list would be allowed whatever the configuration, with any argument
    (fork through clone) and without its errno answer (clone3, which cannot be limited to
    threads)."""
    assert not BASE & (FILE_HANDLE_CALLS | XATTR_CALLS | FLOCK_CALLS)
    assert not BASE & (set(ARGUMENT_RULES) | set(ERRNO_UNLESS_ALLOWED))
    assert {"clone", "clone3", "fork", "vfork", "execve"}.isdisjoint(filter_names(
        inode_file_handles="mandatory", xattr=True, flock=True, posix_lock=True, syslog=True))
