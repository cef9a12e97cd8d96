"""Live-migration plumbing for guest tests and the rounds benchmark: endpoints (a daemon and a
QEMU 10.0 with a QMP socket) and one migration between two of them.

Every QEMU gets the same kernel, initramfs and memory layout; a destination starts with
``-incoming defer`` and listens once its return-path capability is set (with it, a failed load
on the destination resumes the source instead of leaving it paused).
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import os
import pathlib
import shutil
import struct
import subprocess
import tempfile
import time

from . import image, qmp, runner

MIGRATION_TIMEOUT = 180.0
PROGRESS_TIMEOUT = 30.0
DATA_BYTES = 512 * 1024
TREE_DIRS, TREE_FILES = 10, 20


@dataclasses.dataclass
class Endpoint:
    name: str
    daemon: subprocess.Popen
    qemu: subprocess.Popen
    monitor: qmp.Qmp
    console: pathlib.Path
    daemon_log: pathlib.Path

    def stop(self) -> None:
        try:
            self.monitor.close()
        finally:
            for process in (self.qemu, self.daemon):
                runner._kill_group(process)


def start_daemon(command: list[str], socket_path: pathlib.Path, shared: pathlib.Path,
                 args: list[str], log_path: pathlib.Path) -> subprocess.Popen:
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [*runner.DIE_WITH_PARENT, *command, "--socket-path", str(socket_path),
             "--shared-dir", str(shared), "--cache", "never", *args],
            stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
            start_new_session=True)
    deadline = time.monotonic() + runner.SOCKET_APPEAR_SECONDS
    while not socket_path.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            runner._kill_group(process)
            raise runner.BootError(f"daemon did not listen: {log_path.read_text(errors='replace')}")
        time.sleep(0.05)
    return process


def start_endpoint(name: str, daemon: str, daemon_args: list[str], shared: pathlib.Path,
                   guest, initramfs: pathlib.Path, work: pathlib.Path, logs: pathlib.Path,
                   qemu: str, *, incoming: bool) -> Endpoint:
    """Daemon + QEMU (+ QMP); a destination (``incoming``) listens on ``work/<name>.mig``."""
    sock = work / f"{name}.sock"
    daemon_log = logs / f"daemon-{name}.log"
    daemon_process = start_daemon(runner.daemon_command(daemon), sock, shared, daemon_args,
                                  daemon_log)
    console = logs / f"console-{name}.log"
    console.write_text("")
    command = runner.qemu_command(guest, initramfs, sock, console, qemu)
    command += ["-qmp", f"unix:{work / (name + '.qmp')},server=on,wait=off"]
    if incoming:
        command += ["-incoming", "defer"]
    with (logs / f"qemu-{name}.log").open("wb") as qemu_log:
        qemu_process = subprocess.Popen([*runner.DIE_WITH_PARENT, *command],
                                        stdin=subprocess.DEVNULL, stdout=qemu_log,
                                        stderr=subprocess.STDOUT, start_new_session=True)
    try:
        monitor = qmp.Qmp(str(work / f"{name}.qmp"))
        monitor.set_capabilities(return_path=True)
        if incoming:
            monitor.command("migrate-incoming", uri=f"unix:{work / (name + '.mig')}")
    except BaseException:
        for process in (qemu_process, daemon_process):
            runner._kill_group(process)
        raise
    return Endpoint(name, daemon_process, qemu_process, monitor, console, daemon_log)


def migrate(source: Endpoint, destination: Endpoint, work: pathlib.Path) -> dict:
    """Migrate the running guest; query-migrate's final answer (status, downtime, total-time)."""
    source.monitor.command("migrate", uri=f"unix:{work / (destination.name + '.mig')}")
    return source.monitor.wait_migration(MIGRATION_TIMEOUT)


def wait_for_console(endpoint: Endpoint, text: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while text not in endpoint.console.read_text(errors="replace"):
        if time.monotonic() > deadline or endpoint.qemu.poll() is not None:
            raise runner.BootError(f"no {text!r} on {endpoint.name}'s console: "
                                   f"{runner.tail(endpoint.console.read_text(errors='replace'), 30)}")
        time.sleep(0.2)


def wait_for_exit(endpoint: Endpoint, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while endpoint.qemu.poll() is None:
        if time.monotonic() > deadline:
            raise runner.BootError(f"{endpoint.name}: the guest did not power off within "
                                   f"{timeout:.0f} s: "
                                   f"{runner.tail(endpoint.console.read_text(errors='replace'), 30)}")
        time.sleep(0.2)


def prepare_share(shared: pathlib.Path) -> str:
    """The files the workloads hold and walk; returns the SHA-256 of held/data.bin."""
    held = shared / "held"
    held.mkdir(parents=True)
    (held / "log.txt").write_bytes(b"")
    data = os.urandom(DATA_BYTES)
    (held / "data.bin").write_bytes(data)
    (held / "removed_by_host.txt").write_bytes(b"removed content\n")
    (held / "locked.bin").write_bytes(bytes(100))
    for d in range(TREE_DIRS):
        (shared / "tree" / f"d{d}").mkdir(parents=True)
        for f in range(TREE_FILES):
            (shared / "tree" / f"d{d}" / f"f{f}").write_bytes(b"x" * f)
    return hashlib.sha256(data).hexdigest()


def host_sees_locks(path: pathlib.Path) -> str:
    """What a host process meets on ``path``: "posix" for a write lock over bytes 0..99 (the
    guest lock holder's), "flock" for an exclusive flock, joined by "+", or "none"."""
    held = []
    fd = os.open(path, os.O_RDWR)
    try:
        query = struct.pack("hhqqi4x", fcntl.F_RDLCK, os.SEEK_SET, 0, 100, 0)
        found = struct.unpack("hhqqi4x", fcntl.fcntl(fd, fcntl.F_OFD_GETLK, query))
        if found[0] == fcntl.F_WRLCK and (found[2], found[3]) == (0, 100):
            held.append("posix")
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            held.append("flock")
    finally:
        os.close(fd)
    return "+".join(held) or "none"


def wait_for_host_locks(path: pathlib.Path, expected: str, timeout: float = 5.0) -> str:
    """:func:`host_sees_locks` once it says ``expected``, or what it says at the deadline (a
    source whose migration failed takes its locks back when QEMU restarts its rings, a moment
    after QMP reports the failure)."""
    deadline = time.monotonic() + timeout
    while (seen := host_sees_locks(path)) != expected and time.monotonic() < deadline:
        time.sleep(0.1)
    return seen


@dataclasses.dataclass
class RoundsReport:
    rounds: int
    completed: int = 0
    stalls: int = 0
    downtime_ms: list[int] = dataclasses.field(default_factory=list)
    total_ms: list[int] = dataclasses.field(default_factory=list)
    checks_ok: bool = False
    values: dict[str, str] = dataclasses.field(default_factory=dict)
    problems: list[str] = dataclasses.field(default_factory=list)


def _grows(path: pathlib.Path, timeout: float) -> bool:
    size = path.stat().st_size
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.stat().st_size > size:
            return True
        time.sleep(0.1)
    return False


def run_rounds(rounds: int, mode: str, workdir: pathlib.Path, qemu: str,
               daemon: str = "ours", extra_args: tuple[str, ...] = ()) -> RoundsReport:
    """Migrate one guest ``rounds`` times, each time to a fresh QEMU and daemon, while it keeps
    reads, writes and a tree walk in flight.  A round whose guest makes no progress on its held
    file within PROGRESS_TIMEOUT after the switch-over counts as a stall."""
    report = RoundsReport(rounds)
    shared = workdir / "shared"
    data_sha = prepare_share(shared)
    guest = image.build()
    work = pathlib.Path(tempfile.mkdtemp(prefix="vfs-rounds-", dir="/tmp"))
    args = ["--migration-mode", mode, *extra_args]
    log = shared / "held" / "log.txt"
    endpoints: list[Endpoint] = []
    try:
        initramfs = image.initramfs_with(guest, runner.guest_script("migrate_rounds.sh"),
                                         work / "initramfs.cpio")
        current = start_endpoint("r0", daemon, args, shared, guest, initramfs, work, workdir,
                                 qemu, incoming=False)
        endpoints.append(current)
        wait_for_console(current, "VALUE ready", 180)
        for number in range(1, rounds + 1):
            following = start_endpoint(f"r{number}", daemon, args, shared, guest, initramfs,
                                       work, workdir, qemu, incoming=True)
            endpoints.append(following)
            result = migrate(current, following, work)
            if result["status"] != "completed":
                report.problems.append(f"round {number}: {result}")
                following.stop()
                continue
            report.completed += 1
            report.downtime_ms.append(result.get("downtime", -1))
            report.total_ms.append(result.get("total-time", -1))
            current.monitor.command("quit")
            current.stop()
            current = following
            if not _grows(log, PROGRESS_TIMEOUT):
                report.stalls += 1
                report.problems.append(f"round {number}: the guest made no progress")
        (shared / "stop").write_bytes(b"")
        try:
            wait_for_exit(current, 180)
        except runner.BootError as failure:
            # A guest that hangs after the last round is a finding like a stall: report it with
            # the figures of the rounds instead of losing them.
            report.problems.append(f"after the last round: {failure}")
        console = "".join(e.console.read_text(errors="replace") for e in endpoints)
        checks, values = runner.parse_console(console)
        report.values = values
        lines = log.read_text().splitlines()
        written = int(values.get("writer_lines", "-1"))
        report.checks_ok = (
            all(check.ok for check in checks) and bool(checks)
            and values.get("read_mismatches") == "0"
            and values.get("data_sha256") == data_sha
            and lines == [f"line {i}" for i in range(written)] + ["after"])
        if not report.checks_ok:
            report.problems.append(f"guest checks: {[c for c in checks if not c.ok]}, "
                                   f"values {values}, {len(lines)} log lines")
        return report
    finally:
        for endpoint in endpoints:
            endpoint.stop()
        shutil.rmtree(work, ignore_errors=True)
