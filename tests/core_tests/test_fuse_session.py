"""INIT negotiation: versions accepted, features enabled per offer and configuration."""

from __future__ import annotations

import errno

import pytest

from virtiofsd.config import CacheMode, Config
from virtiofsd.errors import FuseError
from virtiofsd.fuse import abi
from virtiofsd.fuse.session import FuseSession, negotiate

F = abi.InitFlag
EVERYTHING = (1 << 32) - 1
DEFAULT = Config(shared_dir="/srv")

#: What the daemon enables with the default configuration when the guest offers every bit.
DEFAULT_ENABLED = (F.ASYNC_READ | F.ATOMIC_O_TRUNC | F.BIG_WRITES | F.AUTO_INVAL_DATA
                   | F.DO_READDIRPLUS | F.READDIRPLUS_AUTO | F.ASYNC_DIO | F.PARALLEL_DIROPS
                   | F.MAX_PAGES | F.SUBMOUNTS | F.HAS_IOCTL_DIR | F.INIT_EXT)


def init_out(body: bytes) -> dict[str, int]:
    names = ("major", "minor", "max_readahead", "flags", "max_background",
             "congestion_threshold", "max_write", "time_gran", "max_pages", "map_alignment",
             "flags2")
    return dict(zip(names, abi.INIT_OUT.unpack(body)))


def test_a_current_guest_gets_our_version_and_limits():
    session, body = negotiate(7, 38, 131072, EVERYTHING, EVERYTHING, DEFAULT)
    out = init_out(body)
    assert len(body) == abi.INIT_OUT.size
    assert (out["major"], out["minor"]) == (7, 38)
    assert out["max_readahead"] == 131072
    assert out["max_background"] == 65535
    assert out["congestion_threshold"] == 49149
    assert out["max_write"] == 1 << 20
    assert out["time_gran"] == 1
    assert out["max_pages"] == 256
    assert out["map_alignment"] == 0
    assert session.initialized
    assert (session.major, session.minor) == (7, 38)
    assert session.max_write == 1 << 20
    assert session.max_readahead == 131072


def test_the_default_configuration_enables_exactly_the_supported_offered_flags():
    session, body = negotiate(7, 38, 0, EVERYTHING, EVERYTHING, DEFAULT)
    out = init_out(body)
    assert session.flags == DEFAULT_ENABLED
    assert out["flags"] == DEFAULT_ENABLED
    assert out["flags2"] == 0


def test_nothing_is_enabled_that_the_guest_did_not_offer():
    session, body = negotiate(7, 38, 0, 0, 0, Config(shared_dir="/", writeback=True,
                                                     allow_mmap=True))
    assert session.flags == 0
    assert init_out(body)["flags"] == 0


@pytest.mark.parametrize("flag", list(F.__members__.values()))
def test_each_flag_alone(flag):
    """Offered alone, a flag comes back exactly when the default configuration supports it."""
    offered = flag | F.INIT_EXT
    session, _body = negotiate(7, 38, 0, offered & EVERYTHING, offered >> 32, DEFAULT)
    assert session.has(flag) == bool(flag & DEFAULT_ENABLED)


@pytest.mark.parametrize("flag", [F.EXPORT_SUPPORT, F.SPLICE_READ, F.NO_OPEN_SUPPORT,
                                  F.CACHE_SYMLINKS, F.CREATE_SUPP_GROUP, F.HAS_INODE_DAX])
def test_unsupported_features_stay_off_under_every_option(flag):
    config = Config(shared_dir="/", posix_acl=True, security_label=True, killpriv_v2=True,
                    xattr=True, writeback=True, allow_mmap=True)
    session, body = negotiate(7, 38, 0, EVERYTHING, EVERYTHING, config)
    assert not session.flags & flag
    out = init_out(body)
    assert not (out["flags"] | out["flags2"] << 32) & flag


@pytest.mark.parametrize("config,flag,expected", [
    (DEFAULT, F.WRITEBACK_CACHE, False),
    (Config(shared_dir="/", writeback=True), F.WRITEBACK_CACHE, True),
    (Config(shared_dir="/", readdirplus=False), F.DO_READDIRPLUS, False),
    (Config(shared_dir="/", readdirplus=False), F.READDIRPLUS_AUTO, False),
    (Config(shared_dir="/", cache=CacheMode.NEVER), F.DO_READDIRPLUS, False),
    (Config(shared_dir="/", cache=CacheMode.ALWAYS), F.DO_READDIRPLUS, True),
    (Config(shared_dir="/", announce_submounts=False), F.SUBMOUNTS, False),
    (DEFAULT, F.SUBMOUNTS, True),
    (DEFAULT, F.DIRECT_IO_ALLOW_MMAP, False),
    (Config(shared_dir="/", allow_mmap=True), F.DIRECT_IO_ALLOW_MMAP, True),
    (DEFAULT, F.HANDLE_KILLPRIV_V2, False),
    (Config(shared_dir="/", killpriv_v2=True), F.HANDLE_KILLPRIV_V2, True),
    (DEFAULT, F.POSIX_LOCKS, False),
    (DEFAULT, F.FLOCK_LOCKS, False),
    (Config(shared_dir="/", posix_lock=True), F.POSIX_LOCKS, True),
    (Config(shared_dir="/", posix_lock=True), F.FLOCK_LOCKS, False),
    (Config(shared_dir="/", flock=True), F.FLOCK_LOCKS, True),
    (Config(shared_dir="/", flock=True), F.POSIX_LOCKS, False),
])
def test_options_switch_features(config, flag, expected):
    session, _body = negotiate(7, 38, 0, EVERYTHING, EVERYTHING, config)
    assert session.has(flag) is expected


def test_flags2_goes_back_in_flags2():
    config = Config(shared_dir="/", allow_mmap=True)
    session, body = negotiate(7, 38, 0, F.INIT_EXT, F.DIRECT_IO_ALLOW_MMAP >> 32, config)
    out = init_out(body)
    assert out["flags"] == F.INIT_EXT
    assert out["flags2"] == F.DIRECT_IO_ALLOW_MMAP >> 32
    assert session.flags == F.INIT_EXT | F.DIRECT_IO_ALLOW_MMAP


def test_flags2_is_ignored_without_init_ext():
    config = Config(shared_dir="/", allow_mmap=True)
    session, body = negotiate(7, 38, 0, F.ASYNC_READ, EVERYTHING, config)
    assert session.flags == F.ASYNC_READ
    assert init_out(body)["flags2"] == 0


@pytest.mark.parametrize("major,minor", [(6, 99), (7, 0), (7, 26), (0, 0)])
def test_old_protocols_are_refused_with_eproto(major, minor):
    with pytest.raises(FuseError) as info:
        negotiate(major, minor, 0, EVERYTHING, 0, DEFAULT)
    assert info.value.errno == errno.EPROTO


@pytest.mark.parametrize("minor", [27, 31, 36])
def test_older_supported_minors_are_accepted(minor):
    session, body = negotiate(7, minor, 0, F.ASYNC_READ, 0, DEFAULT)
    assert session.initialized
    assert session.minor == minor
    assert init_out(body)["minor"] == 38


def test_a_newer_major_gets_our_version_only_and_no_session():
    session, body = negotiate(8, 0, 4096, EVERYTHING, EVERYTHING, DEFAULT)
    out = init_out(body)
    assert (out["major"], out["minor"]) == (7, 38)
    assert [value for key, value in out.items() if key not in ("major", "minor")] == [0] * 9
    assert not session.initialized


def test_a_fresh_session_is_uninitialized():
    session = FuseSession()
    assert not session.initialized
    assert session.flags == 0
    assert not session.has(F.ASYNC_READ)
    assert "initialized=False" in repr(session)


ACL_FLAGS = F.POSIX_ACL | F.DONT_MASK | F.SETXATTR_EXT


def test_posix_acl_negotiates_its_three_flags():
    config = Config(shared_dir="/", xattr=True, posix_acl=True)
    session, body = negotiate(7, 38, 0, EVERYTHING, EVERYTHING, config)
    assert session.has(ACL_FLAGS)
    assert init_out(body)["flags"] & ACL_FLAGS == ACL_FLAGS
    assert not negotiate(7, 38, 0, EVERYTHING, EVERYTHING, DEFAULT)[0].flags & ACL_FLAGS


@pytest.mark.parametrize("missing", [F.POSIX_ACL, F.DONT_MASK, F.SETXATTR_EXT])
def test_posix_acl_refuses_a_guest_without_one_of_its_flags(missing):
    config = Config(shared_dir="/", xattr=True, posix_acl=True)
    with pytest.raises(FuseError) as caught:
        negotiate(7, 38, 0, EVERYTHING & ~int(missing), EVERYTHING, config)
    assert caught.value.errno == errno.EPROTO


def test_security_label_negotiates_security_ctx_or_refuses():
    config = Config(shared_dir="/", xattr=True, security_label=True)
    offered = F.INIT_EXT | F.SECURITY_CTX
    session, _ = negotiate(7, 38, 0, offered & 0xFFFFFFFF, offered >> 32, config)
    assert session.has(F.SECURITY_CTX)
    with pytest.raises(FuseError) as caught:
        negotiate(7, 38, 0, int(F.INIT_EXT), 0, config)
    assert caught.value.errno == errno.EPROTO
