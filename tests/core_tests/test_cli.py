"""The command line: Rust daemon's names and defaults, -o compatibility, refusals of unbuilt options."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from virtiofsd import __version__
from virtiofsd.cli import build_parser, config_from_args
from virtiofsd.config import CacheMode, Sandbox, Seccomp
from virtiofsd.errors import ConfigError


def parse(*argv: str):
    return config_from_args(build_parser().parse_args(list(argv)))


@pytest.fixture
def base(tmp_path):
    return ["--socket-path", str(tmp_path / "vfsd.sock"), "--shared-dir", str(tmp_path)]


def test_defaults_match_the_rust_daemon(base, tmp_path):
    config, fallbacks = parse(*base)
    assert config.shared_dir == str(tmp_path)
    assert config.cache is CacheMode.AUTO
    assert config.thread_pool_size == 0
    assert config.readdirplus and config.announce_submounts
    assert not (config.writeback or config.allow_direct_io or config.readonly
                or config.killpriv_v2 or config.xattr)
    assert config.log_level == "info"
    assert not config.allow_mmap
    assert config.posix_lock and config.flock, "locks are served unless -o no_posix_lock/no_flock"


def test_unbuilt_defaults_fall_back_with_a_note(base):
    config, fallbacks = parse(*base)
    assert config.sandbox is Sandbox.NONE and config.seccomp is Seccomp.NONE
    notes = " ".join(fallbacks)
    assert "namespace sandbox" in notes and "seccomp" in notes


@pytest.mark.parametrize("argv, option", [
    (["--xattr"], "--xattr"),
    (["--posix-acl"], "--posix-acl"),
    (["--xattrmap", ":map::user.virtiofs.:"], "--xattrmap"),
    (["--security-label"], "--security-label"),
    (["--modcaps=+sys_admin"], "--modcaps"),
    (["--translate-uid", "map:0:1000:1"], "--translate-uid"),
    (["--uid-map", ":0:1000:1:"], "--uid-map"),
    (["--migration-mode", "file-handles"], "--migration-mode"),
    (["--migration-confirm-paths"], "--migration-confirm-paths"),
    (["--sandbox", "namespace"], "--sandbox=namespace"),
    (["--sandbox", "chroot"], "--sandbox=chroot"),
    (["--seccomp", "kill"], "--seccomp=kill"),
    (["-o", "xattr"], "--xattr"),
])
def test_unbuilt_options_are_refused_by_name(base, argv, option):
    with pytest.raises(ConfigError, match=option):
        parse(*base, *argv)


@pytest.mark.parametrize("value", ["prefer", "mandatory", "fallback"])
def test_file_handle_stores_not_installed_are_refused(base, value):
    with pytest.raises(ConfigError, match=f"--inode-file-handles={value}"):
        parse(*base, f"--inode-file-handles={value}")


def test_never_inode_store_is_accepted(base):
    config, _ = parse(*base, "--inode-file-handles=never")
    assert config.inode_file_handles == "never"


def test_implemented_options(base):
    config, fallbacks = parse(*base, "--cache", "never", "--writeback", "--allow-direct-io",
                              "--readonly", "--no-readdirplus", "--no-announce-submounts",
                              "--preserve-noatime", "--thread-pool-size", "4", "--sandbox",
                              "none", "--seccomp", "none", "--no-killpriv-v2", "--log-level",
                              "debug", "--tag", "myfs", "--rlimit-nofile", "0", "--allow-mmap")
    assert config.cache is CacheMode.NEVER and config.writeback and config.allow_direct_io
    assert config.readonly and not config.readdirplus and not config.announce_submounts
    assert config.preserve_noatime and config.thread_pool_size == 4
    assert config.log_level == "debug" and config.tag == "myfs" and config.rlimit_nofile == 0
    assert config.allow_mmap and not config.killpriv_v2
    assert parse(*base, "--killpriv-v2")[0].killpriv_v2
    assert parse(*base, "-o", "killpriv_v2")[0].killpriv_v2
    assert not any("sandbox" in note or "seccomp" in note for note in fallbacks)


def test_compat_o_options(tmp_path):
    config, _ = parse("--socket-path", str(tmp_path / "s"), "-o",
                      f"source={tmp_path},cache=none,writeback,no_readdirplus,allow_direct_io,"
                      "loglevel=debug,no_posix_lock,no_flock,no_xattr,announce_submounts",
                      "-o", "sandbox=none")
    assert config.shared_dir == str(tmp_path)
    assert config.cache is CacheMode.NEVER and config.writeback and config.allow_direct_io
    assert not config.readdirplus and config.log_level == "debug"
    assert config.sandbox is Sandbox.NONE
    assert not config.posix_lock and not config.flock


@pytest.mark.parametrize("words, posix_lock, flock", [
    ("posix_lock", True, True), ("flock", True, True), ("no_posix_lock", False, True),
    ("no_flock", True, False), ("no_flock,flock", True, True),
])
def test_compat_o_lock_options(base, words, posix_lock, flock):
    config, _ = parse(*base, "-o", words)
    assert (config.posix_lock, config.flock) == (posix_lock, flock)


@pytest.mark.parametrize("option, message", [
    ("timeout=5", "timeout"),
    ("bogus", "unknown option"), ("cache=sometimes", "cache"), ("log_level=loud", "log level"),
])
def test_compat_o_refusals(base, option, message):
    with pytest.raises(ConfigError, match=message):
        parse(*base, "-o", option)


def test_debug_flag_sets_debug_level(base):
    config, _ = parse(*base, "-d", "-f")
    assert config.log_level == "debug"


def test_socket_path_or_fd_exactly_one(tmp_path):
    with pytest.raises(ConfigError, match="exactly one"):
        parse("--shared-dir", str(tmp_path))
    with pytest.raises(ConfigError, match="exactly one"):
        parse("--shared-dir", str(tmp_path), "--socket-path", "/tmp/x", "--fd", "3")


def test_missing_shared_dir_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="not an existing directory"):
        parse("--socket-path", str(tmp_path / "s"), "--shared-dir", str(tmp_path / "missing"))


def test_deprecated_socket_alias(tmp_path):
    config, _ = parse("--socket", str(tmp_path / "s"), "--shared-dir", str(tmp_path))
    assert config.socket_path == str(tmp_path / "s")


def run_cli(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "virtiofsd", *argv], capture_output=True,
                          text=True, timeout=60)


def test_print_capabilities_is_vhost_user_json():
    result = run_cli("--print-capabilities")
    assert result.returncode == 0
    assert json.loads(result.stdout) == {"type": "fs", "features": ["separate-options"]}


def test_version_and_help():
    assert run_cli("--version").stdout.strip() == f"virtiofsd {__version__}"
    help_text = run_cli("--help").stdout
    for option in ("--shared-dir", "--socket-path", "--cache", "--inode-file-handles",
                   "--sandbox", "--seccomp", "--thread-pool-size", "--xattrmap"):
        assert option in help_text


def test_refusal_exits_2_naming_the_option(tmp_path):
    result = run_cli("--socket-path", str(tmp_path / "s"), "--shared-dir", str(tmp_path),
                     "--xattr")
    assert result.returncode == 2
    assert "--xattr is not implemented yet" in result.stderr
