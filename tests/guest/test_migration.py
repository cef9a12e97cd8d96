"""Live migration of a running guest between two QEMU 10.0 instances and two daemons.

Source QEMU + daemon A, destination QEMU (``-incoming defer``) + daemon B, both daemons on the
same shared folder; QMP migrates with the return-path capability on both sides, so a failed
load on the destination resumes the source.  The guest (scripts/migrate.sh) keeps files open,
appends to one and walks a tree while the migration runs, so requests are in flight at the
switch-over; after it, the same processes carry on, on the destination.  The host removes one
held file mid-migration: find-paths cannot find it again (``--migration-on-error`` decides),
file handles still can.  A third guest process holds a POSIX write lock and an flock on
held/locked.bin across the migration (programs/lockprobe.c ``hold``): the host sees both held
right after the switch-over (by the destination daemon; by the source again when the migration
failed), the process moves them on the daemon that now serves it, and the host sees them
released once it exited.

The file-handles test migrates there and back (two hops); 20+ rounds back and forth with reads,
writes and walks in flight are ``bench/migration_rounds.py``.
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import os
import pathlib
import shutil
import struct
import tempfile

import pytest

from . import image, migration, runner
from .test_locks import build_probe

pytestmark = [pytest.mark.guest]

READY_TIMEOUT = 180.0
EXIT_TIMEOUT = 180.0


@dataclasses.dataclass
class Outcome:
    status: str
    console: str
    destination_log: str
    checks: dict[str, runner.GuestCheck]
    values: dict[str, str]
    data_sha256: str
    shared: pathlib.Path
    #: What the host met on held/locked.bin after the switch-over, and after the guest's lock
    #: holder exited (:func:`migration.host_sees_locks`).
    locks_after: str
    locks_after_exit: str


def run_migration(source_daemon: str, destination_daemon: str, source_args: list[str],
                  destination_args: list[str], tmp_path: pathlib.Path, qemu: str,
                  hops: int = 1, expect_locks: str = "posix+flock") -> Outcome:
    """Boot on the source, then migrate ``hops`` times, each time to a fresh destination
    (daemon ``destination_daemon`` with ``destination_args``), while the workload runs.
    ``expect_locks``: what the host should meet on the guest's locked file after the
    migration (the check waits a moment for it)."""
    shared = tmp_path / "shared"
    data_sha = migration.prepare_share(shared)
    guest = image.build()
    work = pathlib.Path(tempfile.mkdtemp(prefix="vfs-mig-", dir="/tmp"))
    endpoints: list[migration.Endpoint] = []
    # Bytes 200..299 of the locked file stay locked on the host until the migration is over,
    # so a guest process waits in F_SETLKW across the switch-over.
    locked = shared / "held" / "locked.bin"
    host_lock = os.open(locked, os.O_RDWR)
    try:
        fcntl.fcntl(host_lock, fcntl.F_OFD_SETLK,
                    struct.pack("hhqqi4x", fcntl.F_WRLCK, os.SEEK_SET, 200, 100, 0))
        initramfs = image.initramfs_with(guest, runner.guest_script("migrate.sh"),
                                         work / "initramfs.cpio",
                                         {"lockprobe": build_probe(work)})
        current = migration.start_endpoint("a", source_daemon, source_args, shared, guest,
                                           initramfs, work, tmp_path, qemu, incoming=False)
        endpoints.append(current)
        migration.wait_for_console(current, "VALUE ready", READY_TIMEOUT)
        migration.wait_for_console(current, "VALUE locks_taken", READY_TIMEOUT)
        # An inode the guest holds disappears from the host while the migration runs.
        (shared / "held" / "removed_by_host.txt").unlink()
        for hop in range(hops):
            destination = migration.start_endpoint(
                "bcdefgh"[hop], destination_daemon, destination_args, shared, guest, initramfs,
                work, tmp_path, qemu, incoming=True)
            endpoints.append(destination)
            status = migration.migrate(current, destination, work)["status"]
            if status != "completed":
                break
            current.monitor.command("quit")
            current = destination
        locks_after = migration.wait_for_host_locks(locked, expect_locks)
        os.close(host_lock)
        host_lock = -1
        (shared / "migrated").write_bytes(b"")
        migration.wait_for_console(current, "VALUE locker_exited", EXIT_TIMEOUT)
        locks_after_exit = migration.wait_for_host_locks(locked, "none")
        (shared / "release_checked").write_bytes(b"")
        migration.wait_for_exit(current, EXIT_TIMEOUT)
        console = "".join(e.console.read_text(errors="replace") for e in endpoints)
        checks, values = runner.parse_console(console)
        return Outcome(status, console, destination.daemon_log.read_text(errors="replace"),
                       {c.name: c for c in checks}, values, data_sha, shared, locks_after,
                       locks_after_exit)
    finally:
        if host_lock >= 0:
            os.close(host_lock)
        for endpoint in endpoints:
            endpoint.stop()
        shutil.rmtree(work, ignore_errors=True)


def assert_guest_carried_on(m: Outcome, setlkw_across: str = f"errno {errno.ENOLCK}") -> None:
    assert "GUEST-UNMOUNTED" in m.console, runner.tail(m.console, 40)
    for name in ("held_write_after", "create_after"):
        assert m.checks[name].ok, m.checks[name]
    assert m.values["data_sha256"] == m.data_sha256
    assert m.values["tree_files"] == str(migration.TREE_DIRS * migration.TREE_FILES)
    lines = (m.shared / "held" / "log.txt").read_text().splitlines()
    written = int(m.values["writer_lines"])
    assert lines == [f"line {i}" for i in range(written)] + ["after 1", "after 2", "after 3"]
    assert (m.shared / "after.txt").read_text() == "created\n"
    for name in ("lock_owner_carries_on", "flock_carries_on"):
        assert m.checks[name].ok, m.checks[name]
    assert m.locks_after_exit == "none"
    # A guest process waiting in F_SETLKW at the switch-over: its request is completed on the
    # source when the rings stop, with ENOLCK (docs/migration.md), not lost and not errno 512.
    assert m.values["setlkw_across"] == setlkw_across


@pytest.fixture(scope="module")
def qemu10() -> str:
    qemu = runner.QEMU_BACKPORTS
    if not os.access(qemu, os.X_OK):
        pytest.skip("QEMU 10.0 (scripts/qemu-backports.sh) is needed: QEMU 7.2 cannot migrate "
                    "vhost-user-fs")
    return qemu


#: Host locks are off by default; these migrations carry the guest's locks, so both sides hold
#: them on the host.
HOST_LOCKS = ["-o", "posix_lock,flock"]


def test_find_paths_guest_error_carries_on_and_fails_only_the_lost_inodes(qemu10, tmp_path):
    m = run_migration("ours", "ours", [*HOST_LOCKS, "--migration-mode", "find-paths"],
                      [*HOST_LOCKS, "--migration-on-error", "guest-error"], tmp_path, qemu10)
    assert m.status == "completed", m.destination_log[-3000:]
    assert_guest_carried_on(m)
    assert m.locks_after == "posix+flock", m.destination_log[-3000:]
    # find-paths' documented limit: an unlinked file and a file removed on the host have no path.
    assert not m.values["unlinked_read"].endswith("exit 0"), m.values
    assert not m.values["removed_read"].endswith("exit 0"), m.values
    assert "migration: restored" in m.destination_log


def test_file_handles_keep_unlinked_and_removed_files_there_and_back(qemu10, tmp_path):
    """Two hops (there and back, each to a fresh QEMU and daemon) with requests in flight."""
    mode = [*HOST_LOCKS, "--migration-mode", "file-handles"]
    m = run_migration("ours", "ours", mode, [*mode, "--migration-on-error", "abort"], tmp_path,
                      qemu10, hops=2)
    assert m.status == "completed", m.destination_log[-3000:]
    assert_guest_carried_on(m)
    assert m.locks_after == "posix+flock", m.destination_log[-3000:]
    assert m.values["unlinked_read"] == "unlinked content|exit 0"
    assert m.values["removed_read"] == "removed content|exit 0"


def test_find_paths_abort_fails_the_migration_and_the_source_carries_on(qemu10, tmp_path):
    m = run_migration("ours", "ours", [*HOST_LOCKS, "--migration-mode", "find-paths"],
                      [*HOST_LOCKS, "--migration-on-error", "abort"], tmp_path, qemu10)
    assert m.status == "failed"
    assert "--migration-on-error=abort" in m.destination_log
    assert_guest_carried_on(m)
    # The source let go of its locks when it saved, and took them back when it resumed.
    assert m.locks_after == "posix+flock"
    assert m.values["unlinked_read"] == "unlinked content|exit 0"
    assert m.values["removed_read"] == "removed content|exit 0"


@pytest.fixture(scope="module")
def rust_reference() -> None:
    if not os.access(runner.RUST_REFERENCE, os.X_OK):
        pytest.skip(f"the Rust reference daemon is not installed at {runner.RUST_REFERENCE}")


def test_a_rust_daemon_stream_is_refused_and_the_source_carries_on(qemu10, rust_reference,
                                                                   tmp_path):
    """docs/migration.md: the two state formats differ; our destination refuses the Rust
    daemon's stream with a clear reason and the guest carries on at the source (return-path).
    The other direction fails the same way in the Rust daemon ("Serde Deserialization Error");
    it is not repeated here to keep the guest time down."""
    m = run_migration("rust", "ours", [], [], tmp_path, qemu10, expect_locks="none")
    assert m.status == "failed"
    # The Rust daemon keeps locks in the guest kernel (docs/locks-and-opcodes.md): the host's
    # lock does not hold up the guest's F_SETLKW.
    assert m.locks_after == "none"
    assert "not a pyvirtiofsd device state" in m.destination_log
    assert_guest_carried_on(m, setlkw_across="ok")
