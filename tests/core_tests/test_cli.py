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
    assert not (config.posix_lock or config.flock), "the guest keeps locks unless -o posix_lock/flock"


def test_sandbox_and_seccomp_defaults_are_the_rust_daemons_and_enforced(base):
    config, fallbacks = parse(*base)
    assert config.sandbox is Sandbox.NAMESPACE and config.seccomp is Seccomp.KILL
    assert not any("sandbox" in note or "seccomp" in note for note in fallbacks)


@pytest.mark.parametrize("sandbox", list(Sandbox))
@pytest.mark.parametrize("seccomp", list(Seccomp))
def test_every_sandbox_and_seccomp_mode_is_accepted(base, sandbox, seccomp):
    config, _ = parse(*base, "--sandbox", sandbox.value, "--seccomp", seccomp.value)
    assert (config.sandbox, config.seccomp) == (sandbox, seccomp)


def test_modcaps_is_kept_in_the_configuration(base):
    config, _ = parse(*base, "--modcaps=+sys_admin:-mknod")
    assert config.modcaps == "+sys_admin:-mknod"


@pytest.mark.parametrize("value, message", [
    ("+no_such_cap", "unknown capability 'no_such_cap'"),
    ("chown", "'chown' must start with \\+ or -"),
])
def test_bad_modcaps_are_refused(base, value, message):
    with pytest.raises(ConfigError, match=message):
        parse(*base, f"--modcaps={value}")


def test_namespace_maps_reach_the_config_in_order(base):
    config, _ = parse(*base, "--uid-map", ":0:100000:65536:", "--uid-map", "/65536/1001/1/",
                      "--gid-map", ":0:100000:65536:")
    assert config.uid_map == (":0:100000:65536:", "/65536/1001/1/")
    assert config.gid_map == (":0:100000:65536:",)


@pytest.mark.parametrize("value, message", [
    ("", "expected :namespace_id:host_id:count:"),
    ("0:1000:1", "expected :namespace_id:host_id:count:"),
    (":0:1000:1", "must end with its separator"),
    (":0/1000:1:", "separator differs"),
    (":0:1000:1:2:", "exactly three values"),
    ("::1000:1:", "namespace_id '' is not an unsigned number"),
    (":-1:1000:1:", "separator differs"),
    (":0:a:1:", "host_id 'a' is not an unsigned number"),
    (":0:4294967296:1:", "host_id 4294967296 does not fit in 32 bits"),
])
@pytest.mark.parametrize("option", ["--uid-map", "--gid-map"])
def test_malformed_namespace_maps_are_refused(base, option, value, message):
    """The Rust daemon's grammar: the first character is the separator, three numbers."""
    with pytest.raises(ConfigError, match=f"{option}: .*{message}"):
        parse(*base, option, value)


@pytest.mark.parametrize("argv", [["--xattr"], ["-o", "xattr"], ["--posix-acl"],
                                  ["--security-label"], ["--xattrmap", ":ok:all:::"],
                                  ["-o", "xattrmap=:ok:all:::"],
                                  ["--posix-acl", "-o", "no_xattr"]])
def test_xattr_options_turn_xattrs_on(base, argv):
    """--posix-acl, --security-label and --xattrmap imply --xattr, as in the Rust daemon."""
    config, _ = parse(*base, *argv)
    assert config.xattr
    assert config.posix_acl == ("--posix-acl" in argv)
    assert config.security_label == ("--security-label" in argv)


def test_xattr_off_by_default_and_with_no_xattr(base):
    assert not parse(*base)[0].xattr
    assert not parse(*base, "--xattr", "-o", "no_xattr")[0].xattr


def test_an_empty_xattrmap_is_refused(base):
    with pytest.raises(ConfigError, match="--xattrmap: no rule given"):
        parse(*base, "--xattrmap", "  ")


def test_translations_reach_the_config_in_order(base):
    config, _ = parse(*base, "--translate-uid", "squash-guest:0:1001:4294967295",
                      "--translate-uid", "host:1001:1000:1", "--translate-gid", "map:0:100:1")
    assert config.translate_uid == ("squash-guest:0:1001:4294967295", "host:1001:1000:1")
    assert config.translate_gid == ("map:0:100:1",)


def test_a_bad_translation_is_refused_naming_the_rule(base):
    with pytest.raises(ConfigError, match="--translate-gid 'map:0:100': map takes 3 numbers"):
        parse(*base, "--translate-gid", "map:0:100")


def test_translation_is_refused_with_posix_acl(base):
    with pytest.raises(ConfigError, match="cannot be used with --posix-acl"):
        parse(*base, "--translate-uid", "map:0:1000:1", "--posix-acl")


@pytest.mark.parametrize("value, name", [("never", "never"), ("prefer", "prefer"),
                                         ("fallback", "prefer"), ("mandatory", "mandatory")])
def test_inode_file_handles_selects_the_entry_point(base, value, name):
    config, _ = parse(*base, f"--inode-file-handles={value}")
    assert config.inode_file_handles == name


def test_inode_file_handles_defaults_to_prefer_as_in_rust(base):
    config, fallbacks = parse(*base)
    assert config.inode_file_handles == "prefer"
    assert not any("file handles" in note for note in fallbacks)


def test_unknown_inode_file_handles_value_is_refused(base):
    with pytest.raises(ConfigError, match="--inode-file-handles=always"):
        parse(*base, "--inode-file-handles=always")


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
    ("posix_lock", True, False), ("flock", False, True), ("posix_lock,flock", True, True),
    ("posix_lock,flock,no_posix_lock", False, True), ("no_flock", False, False),
    ("flock,no_flock,flock", False, True),
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
    assert json.loads(result.stdout) == {"type": "fs",
                                         "features": ["migrate-precopy", "separate-options"]}


def test_version_and_help():
    assert run_cli("--version").stdout.strip() == f"virtiofsd {__version__}"
    help_text = run_cli("--help").stdout
    for option in ("--shared-dir", "--socket-path", "--cache", "--inode-file-handles",
                   "--sandbox", "--seccomp", "--thread-pool-size", "--xattrmap"):
        assert option in help_text


def test_refusal_exits_2_naming_the_option(tmp_path):
    result = run_cli("--socket-path", str(tmp_path / "s"), "--shared-dir", str(tmp_path),
                     "--tag", "x" * 37)
    assert result.returncode == 2
    assert "--tag must be 1 to 36 bytes long" in result.stderr
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("option", ["--migration-verify-handles", "--migration-confirm-paths"])
def test_path_checks_are_refused_with_file_handle_migration(base, option):
    with pytest.raises(ConfigError, match=f"{option} only applies to --migration-mode=find-paths"):
        config_from_args(build_parser().parse_args([*base, "--migration-mode", "file-handles",
                                                    option]))


def test_migration_options_reach_the_configuration(base):
    config, _ = config_from_args(build_parser().parse_args(
        [*base, "--migration-on-error", "guest-error", "--migration-verify-handles",
         "--migration-confirm-paths"]))
    assert (config.migration_mode, config.migration_on_error, config.migration_verify_handles,
            config.migration_confirm_paths) == ("find-paths", "guest-error", True, True)
    config, _ = config_from_args(build_parser().parse_args(
        [*base, "--migration-mode", "file-handles"]))
    assert (config.migration_mode, config.migration_on_error) == ("file-handles", "abort")
