"""The POSIX conformance suite (scripts/conformance.py) and stress-ng, in a real guest.

One boot per daemon covers five configurations at once: the guest gets five vhost-user-fs
devices, each served by its own daemon of the same kind with different options, and the host's
root over 9p to run the host's Python and stress-ng (see runner.boot):

* ``auto``      -- ``--cache auto``, every other option at its default, mounted at /mnt;
* ``never``     -- ``--cache never``, host locks (ours);
* ``writeback`` -- ``--cache auto --writeback``, host locks (ours);
* ``always``    -- ``--cache always``, the coherence checks only (recorded, not judged);
* ``stress``    -- ``--cache auto --inode-file-handles=never``, host locks (ours): stress-ng
  only.

Every check of every configuration is its own test, parametrised over the static
``CONFORMANCE_CHECKS`` list, so a check that vanishes from the guest's output fails.  The
Rust daemon runs the same suite; where it fails a check for a known reason
(``RUST_DIFFERENCES``) the result is recorded as an expected failure, not hidden.
docs/conformance.md holds the table of both daemons' results (scripts/conformance_table.py).
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import re
import subprocess
import sys

import pytest

from . import host_agent, runner

SCRIPTS = pathlib.Path(__file__).resolve().parent / "scripts"
SUITE = SCRIPTS / "conformance.py"
STRESS = SCRIPTS / "fs_stress.py"
#: Where the suite's scripts are in the chroot: shipped in the guest's initramfs and copied to the
#: guest's own /tmp, since the checkout itself may be where the chroot cannot see it (under the
#: host's /tmp, which the guest's tmpfs covers there).
GUEST_SCRIPTS = "/tmp/conformance-scripts"
BOOT_TIMEOUT = float(os.environ.get("VIRTIOFSD_CONFORMANCE_TIMEOUT", "900"))
#: Comma-separated check names: run only those (debugging one check without the whole suite;
#: the other checks then fail as not reported).
ONLY = os.environ.get("VIRTIOFSD_CONFORMANCE_ONLY", "")
STRESS_SECONDS = int(os.environ.get("VIRTIOFSD_STRESS_SECONDS", "2"))  # per stressor


@dataclasses.dataclass(frozen=True)
class Configuration:
    label: str
    tag: str
    daemon_args: tuple[str, ...]
    cache: str
    #: The 20,000-entry readdir runs once per boot; the other configurations use 2,000.
    big_dir: int
    #: Options for our daemon only (the Rust daemon refuses them).
    ours_args: tuple[str, ...] = ()
    #: The checks run on this configuration (None: all of CONFORMANCE_CHECKS).
    only: tuple[str, ...] | None = None

    def args_for(self, daemon_name: str) -> tuple[str, ...]:
        return self.daemon_args + (self.ours_args if daemon_name == "ours" else ())

    @property
    def checks(self) -> tuple[str, ...]:
        return CONFORMANCE_CHECKS if self.only is None else self.only


#: Host locks (``-o posix_lock,flock``, ours only) on the never, writeback and stress shares; the
#: auto share keeps the default (the guest keeps its locks, as with the Rust daemon).  On the
#: stress share stress-ng's lock stressors reach the daemon's host locks, with options under
#: which no worker is killed while it waits for a lock (scripts/fs_stress.py): such a worker
#: cannot exit before the lock is granted (virtio-fs has no FUSE_INTERRUPT,
#: docs/locks-and-opcodes.md).
HOST_LOCKS = ("-o", "posix_lock,flock")
#: HANDLE_KILLPRIV_V2 on the never share (ours only): a direct-I/O write skips the guest
#: kernel's clearing of setuid/setgid and is flagged WRITE_KILL_SUIDGID instead, so this share is
#: where the daemon's clearing is proven (docs/conformance.md says why the Rust daemon runs it
#: without the option).
KILLPRIV = ("--killpriv-v2",)
#: The checks of the ``always`` share: what the guest sees of host changes under --cache always,
#: which promises nothing (recorded as NOTE lines), and the one way that must work.
COHERENCE_CHECKS = ("coherence_host_changes_file", "coherence_host_replaces_file",
                    "coherence_host_creates_and_removes", "coherence_guest_write_seen_by_host")


CONFIGURATIONS = (
    Configuration("auto", "myfs", ("--cache", "auto"), "auto", 20000),
    Configuration("never", "fsnever", ("--cache", "never"), "never", 2000,
                  HOST_LOCKS + KILLPRIV),
    Configuration("writeback", "fswriteback", ("--cache", "auto", "--writeback"), "auto", 2000,
                  HOST_LOCKS),
    Configuration("always", "fsalways", ("--cache", "always"), "always", 0,
                  only=COHERENCE_CHECKS),
    # stress-ng alone, on a share of its own: with --inode-file-handles=never every inode the
    # daemon holds costs a descriptor, so the fd count after the stress and a cache drop sees an
    # inode the daemon failed to forget (with the default prefer store inodes cost none).  Not
    # --writeback: Linux's FUSE client answers lseek(SEEK_HOLE) from the host file while the
    # guest still caches the writes that grew it, so stress-ng's seek stressor gets ENXIO from
    # either daemon.
    Configuration("stress", "fsstress", ("--cache", "auto", "--inode-file-handles=never"),
                  "auto", 0, HOST_LOCKS, only=()),
)
STRESS_LABEL = "stress"
#: The checks that read folders the host fills before the boot (conformance.prepare_fixtures).
FIXTURE_CHECKS = {"readdir_large", "readdir_while_changing", "seekdir_telldir"}

CONFORMANCE_CHECKS = (
    "open_creat_excl_existing", "open_creat_excl_new", "open_creat_excl_dangling_symlink",
    "open_trunc", "open_append", "open_nofollow_symlink", "open_directory_on_file",
    "open_directory_on_dir", "open_write_on_dir", "open_missing", "open_tmpfile",
    "mode_umask", "mode_umask_zero", "owner_of_new_nodes_for_user",
    "user_cannot_write_root_file", "user_cannot_create_in_root_dir",
    "setgid_dir_group_inheritance", "setgid_dir_non_member_cve_2022_0358", "sticky_dir",
    "chmod_by_non_owner", "chown_rules", "chmod_sgid_by_non_member_cleared",
    "suid_cleared_on_write_by_non_owner", "sgid_without_group_exec_kept_for_member",
    "suid_cleared_on_truncate_by_non_owner", "suid_cleared_on_ftruncate_by_non_owner",
    "suid_cleared_on_chown", "suid_kept_on_write_by_root",
    "name_255_bytes", "name_256_bytes", "name_every_byte_value", "symlink_loop",
    "rename_missing_source", "rename_dir_over_file", "rename_file_over_dir",
    "rename_over_non_empty_dir", "rename_over_empty_dir", "rename_file_over_file",
    "rename_to_itself", "rename_across_mounts", "rename_dir_into_own_child",
    "rename_dot_entries", "rename_noreplace", "rename_exchange", "hard_link_counts",
    "unlink_and_rmdir_errors", "unlink_open_file",
    "sparse_seek_data_hole", "fallocate_default", "fallocate_keep_size",
    "fallocate_punch_hole", "fallocate_zero_range", "copy_file_range", "o_direct",
    "fsync_fdatasync", "writer_and_reader_fds", "truncate_while_open", "mmap_shared",
    "offsets_beyond_4gib", "utimensat_now", "utimensat_omit", "timestamps_nanoseconds",
    "write_updates_mtime_ctime", "atime_relatime",
    "readdir_large", "readdir_while_changing", "seekdir_telldir", "dot_and_dotdot",
    "coherence_host_changes_file", "coherence_host_replaces_file",
    "coherence_host_creates_and_removes", "coherence_guest_write_seen_by_host",
    "posix_lock_conflict", "posix_read_locks_share", "posix_setlkw_waits_without_stalling",
    "posix_lock_released_on_close", "posix_lock_released_on_exit", "flock_conflict",
    "flock_released_on_close", "flock_blocking_wait", "ofd_lock_released_on_close",
    "locks_seen_by_host",
)
STRESS_CHECKS = (
    "stress_dir", "stress_dentry", "stress_rename", "stress_link", "stress_symlink",
    "stress_flock", "stress_fcntl", "stress_lockf", "stress_mmap", "stress_sync_file",
    "stress_fallocate", "stress_seek", "stress_hdd", "stress_no_fd_growth",
)
ALL_CHECKS = tuple(f"{configuration.label}.{name}" for configuration in CONFIGURATIONS
                   for name in configuration.checks) + tuple(f"{STRESS_LABEL}.{name}" for name in STRESS_CHECKS)

#: Checks the Rust virtiofsd fails, with the reason (check name without label, or label.check).
RUST_DIFFERENCES = {
    "locks_seen_by_host": "the Rust daemon does not negotiate POSIX_LOCKS/FLOCK_LOCKS (it answers "
                          "lock requests with ENOSYS), so the guest kernel keeps locks to itself: "
                          "conflicts between guest processes work, host programs see nothing; ours "
                          "holds them as OFD locks on the host file",
    "open_tmpfile": "the Rust daemon answers TMPFILE with ENOSYS, which the guest reports as "
                    "EOPNOTSUPP; ours creates the file with O_TMPFILE on the host",
    "never.suid_cleared_on_write_by_non_owner":
        "with --cache never the guest writes through direct I/O, which skips the guest kernel's "
        "clearing of setuid/setgid; the write is flagged WRITE_KILL_SUIDGID, which the daemon "
        "honours only with --killpriv-v2: ours runs this share with it, the Rust daemon without "
        "(with it, Rust failed this check after the rest of the suite, and it clears S_ISGID "
        "without group-exec on a group member's write on this host's Linux 6.18, see "
        "docs/conformance.md)",
}
#: Checks ours fails by choice of configuration (label.check), with the reason.
OURS_DIFFERENCES = {
    "auto.locks_seen_by_host": "host locks are off by default (-o posix_lock,flock turns them on, "
                               "as on the never, writeback and stress shares); like the Rust "
                               "daemon, the guest kernel then keeps its locks to itself",
}
#: Checks both daemons fail in their default configuration, with the reason; recorded as
#: expected failures for both (label.check).
KNOWN_LIMITATIONS: dict[str, str] = {}


def guest_workload() -> str:
    """The guest script: mount the extra devices inside the host root, run the suite on each
    configuration, then stress-ng on one."""
    # The chroot has no guest /proc: the suites ask this shell loop to drop caches instead.
    lines = [
        f"mkdir -p /host{GUEST_SCRIPTS} && cp /{SUITE.name} /{STRESS.name} /host{GUEST_SCRIPTS}/",
        "mkfifo /host/tmp/drop-caches.request /host/tmp/drop-caches.done",
        "( while read request < /host/tmp/drop-caches.request; do sync; "
        "echo 3 > /proc/sys/vm/drop_caches; echo done > /host/tmp/drop-caches.done; done ) &",
        "drop_caches_server=$!",
    ]
    mounts = {}
    for configuration in CONFIGURATIONS:
        if configuration.tag == "myfs":
            mounts[configuration.label] = "/mnt"
            continue
        mounts[configuration.label] = f"/tmp/{configuration.label}"
        lines.append(f"mkdir -p /host/tmp/{configuration.label} && "
                     f"mount -t virtiofs {configuration.tag} /host/tmp/{configuration.label} "
                     f"|| echo 'GUEST-ERROR mount {configuration.tag} failed'")
    for index, configuration in enumerate(CONFIGURATIONS):
        mount = mounts[configuration.label]
        other = mounts[CONFIGURATIONS[(index + 1) % len(CONFIGURATIONS)].label]
        only = [name for name in configuration.checks if not ONLY or name in ONLY.split(",")]
        if not only:
            continue
        lines.append(
            f"in_host python3 {GUEST_SCRIPTS}/{SUITE.name} --mount {mount} --label {configuration.label} "
            f"--cache {configuration.cache} --host-requests {mount}/{host_agent.REPLY_FOLDER} "
            f"--other-mount {other} --big-dir {configuration.big_dir}"
            + (f" --only {','.join(only)}" if configuration.only is not None or ONLY else "")
        )
    lines.append(
        f"in_host python3 {GUEST_SCRIPTS}/{STRESS.name} --mount {mounts[STRESS_LABEL]} --label {STRESS_LABEL} "
        f"--seconds {STRESS_SECONDS} --host-requests {mounts[STRESS_LABEL]}/{host_agent.REPLY_FOLDER}"
    )
    lines.append("kill $drop_caches_server")
    lines.append('echo "NOTE guest uptime $(cut -d" " -f1 /proc/uptime) s"')
    lines += [f"umount /host/tmp/{label}" for label, mount in mounts.items() if mount != "/mnt"]
    return runner.guest_script(prelude="\n".join(lines) + "\n")


def run_conformance(daemon_name: str, root: pathlib.Path) -> runner.BootResult:
    suite = host_agent.load_script_module("conformance")
    shares = {}
    for configuration in CONFIGURATIONS:
        shares[configuration.label] = root / f"share-{configuration.label}"
        shares[configuration.label].mkdir()
        if FIXTURE_CHECKS & set(configuration.checks):
            suite.prepare_fixtures(str(shares[configuration.label]), configuration.big_dir)
    primary = CONFIGURATIONS[0]
    extra = [runner.ExtraShare(configuration.tag, shares[configuration.label],
                               configuration.args_for(daemon_name))
             for configuration in CONFIGURATIONS[1:]]
    logs = root / "logs"
    logs.mkdir()
    agent = host_agent.HostAgent(logs / "console.log", shares)
    agent.start()
    try:
        return runner.boot(daemon_name, shares[primary.label], guest_workload(),
                           daemon_args=list(primary.args_for(daemon_name)), timeout=BOOT_TIMEOUT,
                           log_dir=logs, host_root=True, extra_shares=extra,
                           extra_files={path.name: path.read_bytes() for path in (SUITE, STRESS)})
    finally:
        agent.stop()


@pytest.fixture
def conformance_boot(daemon_name: str, boot_once, tmp_path_factory) -> runner.BootResult:
    return boot_once(("conformance", daemon_name),
                     lambda: run_conformance(daemon_name, tmp_path_factory.mktemp(f"conformance-{daemon_name}")))


def test_check_list_matches_the_scripts() -> None:
    """The static list above is what the guest scripts define: adding or renaming a check
    means updating it (and docs/conformance.md)."""
    listed = subprocess.run([sys.executable, str(SUITE), "--list"], capture_output=True, text=True,
                            check=True).stdout.split()
    stress = subprocess.run([sys.executable, str(STRESS), "--list"], capture_output=True, text=True,
                            check=True).stdout.split()
    assert tuple(listed) == CONFORMANCE_CHECKS
    assert tuple(stress) == STRESS_CHECKS


def known_difference(daemon_name: str, check_name: str) -> str | None:
    if check_name in KNOWN_LIMITATIONS:
        return KNOWN_LIMITATIONS[check_name]
    if daemon_name == "ours":
        return OURS_DIFFERENCES.get(check_name)
    label, _, bare = check_name.partition(".")
    return RUST_DIFFERENCES.get(check_name) or RUST_DIFFERENCES.get(bare)


@pytest.mark.timeout(BOOT_TIMEOUT + 120)
@pytest.mark.parametrize("check_name", ALL_CHECKS)
def test_conformance_check(conformance_boot: runner.BootResult, daemon_name: str, check_name: str) -> None:
    check = conformance_boot.check(check_name)
    assert check is not None, (f"the guest never reported {check_name!r}\n"
                               f"{conformance_boot.console_tail(20)}")
    if not check.ok and (reason := known_difference(daemon_name, check_name)):
        pytest.xfail(f"known difference: {reason} ({check.detail})")
    assert check.ok, f"{check_name}: {check.detail}"


def test_always_records_what_the_guest_sees(conformance_boot: runner.BootResult) -> None:
    """--cache always promises no coherence with changes made on the host, so its coherence
    checks record how long the guest took to see each change (NOTE lines, quoted in
    docs/conformance.md) rather than judge it: all four must be on record."""
    notes = [line for line in conformance_boot.console.splitlines()
             if line.startswith("NOTE always.coherence ")]
    events = ("in-place host write", "host rename over the file", "host-created file",
              "host-removed file")
    assert [event for event in events if not any(f" {event}: " in note for note in notes)] == [], notes


def test_conformance_boot_clean(conformance_boot: runner.BootResult) -> None:
    """Every check reported once, the guest shut down cleanly, no daemon logged an error."""
    reported = [check.name for check in conformance_boot.checks]
    assert sorted(reported) == sorted(ALL_CHECKS), set(reported) ^ set(ALL_CHECKS)
    assert "GUEST-HOST-ROOT" in conformance_boot.console
    assert "GUEST-ERROR" not in conformance_boot.console, conformance_boot.console_tail(30)
    logs = {"primary": conformance_boot.daemon_log, **conformance_boot.extra_daemon_logs}
    for name, log in logs.items():
        errors = [line for line in log.splitlines() if re.search(r"\b(ERROR|CRITICAL|Traceback|panicked)\b", line)]
        assert not errors, f"daemon {name} logged errors:\n" + "\n".join(errors[:20])
    assert conformance_boot.daemon_returncode == 0
    assert set(conformance_boot.extra_daemon_returncodes.values()) == {0}
