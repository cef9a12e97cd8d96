"""Boots the test guest against a virtio-fs daemon and collects what both sides reported.

One boot is: start the daemon on a fresh socket, wait for the socket to appear, start QEMU
(TCG, no KVM needed) with a vhost-user-fs device on that socket, let the guest's /init mount
the share, run the workload and power off, then wait for the daemon to exit on its own.
Every wait has a deadline; whatever happens, both processes are gone when :func:`boot`
returns or raises, so a broken daemon can never leave a test run hanging.

The guest reports over the serial console with one line per fact:

* ``RESULT <name> ok|fail [detail]``  -- a check the guest made itself;
* ``VALUE <name> <text>``             -- something the host side compares afterwards;
* ``GUEST-...``                       -- progress markers printed by /init.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pathlib
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any

from . import image as guest_image

log = logging.getLogger(__name__)

RUST_REFERENCE = pathlib.Path(
    os.environ.get("VIRTIOFSD_RUST_REFERENCE", "/var/tmp/virtiofsd-reference/rust-virtiofsd")
)
QEMU = os.environ.get("VIRTIOFSD_QEMU", "qemu-system-x86_64")
#: QEMU 10.0 from bookworm-backports (scripts/qemu-backports.sh prints its path).
QEMU_BACKPORTS = os.environ.get("VIRTIOFSD_QEMU_BACKPORTS",
                                "/var/tmp/qemu-backports/qemu-system-x86_64")
#: The QEMUs a guest test can boot under, by the name tests and options use.
QEMUS = {"system": QEMU, "backports": QEMU_BACKPORTS}
GUEST_MEMORY_MIB = 512
SOCKET_APPEAR_SECONDS = 30.0
DAEMON_EXIT_SECONDS = 15.0
DAEMON_DEATH_GRACE_SECONDS = 10.0
SCRIPTS_DIR = pathlib.Path(__file__).resolve().parent / "scripts"


@dataclasses.dataclass(frozen=True)
class ExtraShare:
    """A further vhost-user-fs device of the same boot: its own daemon (same kind as the
    boot's, with its own options) on its own folder; the workload mounts it with
    ``mount -t virtiofs TAG DIR``.  Lets one boot compare several daemon configurations."""

    tag: str
    shared_dir: pathlib.Path
    daemon_args: tuple[str, ...] = ()


class BootError(AssertionError):
    """A boot did not complete; the message carries the console and daemon log tails."""


@dataclasses.dataclass(frozen=True)
class GuestCheck:
    name: str
    ok: bool
    detail: str


@dataclasses.dataclass
class BootResult:
    daemon: str
    console: str = dataclasses.field(repr=False)
    daemon_log: str = dataclasses.field(repr=False)
    daemon_returncode: int | None
    qemu_returncode: int
    seconds: float
    checks: list[GuestCheck] = dataclasses.field(repr=False)
    values: dict[str, str] = dataclasses.field(repr=False)
    #: Log and exit status of each ExtraShare's daemon, by tag.
    extra_daemon_logs: dict[str, str] = dataclasses.field(default_factory=dict, repr=False)
    extra_daemon_returncodes: dict[str, int | None] = dataclasses.field(default_factory=dict)

    def markers(self) -> list[str]:
        return [line.strip() for line in self.console.splitlines() if line.startswith("GUEST-")]

    def check(self, name: str) -> GuestCheck | None:
        matching = [check for check in self.checks if check.name == name]
        return matching[-1] if matching else None

    def console_tail(self, lines: int = 40) -> str:
        return tail(self.console, lines)


def tail(text: str, lines: int) -> str:
    return "\n".join(text.splitlines()[-lines:])


def daemon_command(name: str) -> list[str]:
    """The argv prefix that starts the named daemon; both take the Rust virtiofsd's flags."""
    if name == "ours":
        # scripts/measure-syscalls.py runs our daemon under strace through this variable.
        return [*shlex.split(os.environ.get("VIRTIOFSD_DAEMON_WRAPPER", "")),
                sys.executable, "-m", "virtiofsd"]
    if name == "rust":
        if not os.access(RUST_REFERENCE, os.X_OK):
            raise BootError(
                f"the Rust reference daemon is not installed at {RUST_REFERENCE}; run "
                "bash /work/shared/tools/reference-daemons.sh (or set VIRTIOFSD_GUEST_DAEMONS=ours)"
            )
        return [str(RUST_REFERENCE)]
    raise ValueError(f"unknown daemon {name!r}: expected 'ours' or 'rust'")


def guest_script(*names: str, prelude: str = "") -> str:
    """Concatenates the shared shell helpers and the named workload scripts."""
    parts = [(SCRIPTS_DIR / "lib.sh").read_text(), prelude]
    parts += [(SCRIPTS_DIR / name).read_text() for name in names]
    return "\n".join(parts)


def parse_console(console: str) -> tuple[list[GuestCheck], dict[str, str]]:
    checks: list[GuestCheck] = []
    values: dict[str, str] = {}
    for line in console.splitlines():
        fields = line.rstrip("\r").split(" ", 3)
        if fields[0] == "RESULT" and len(fields) >= 3 and fields[2] in ("ok", "fail"):
            detail = fields[3] if len(fields) > 3 else ""
            checks.append(GuestCheck(fields[1], fields[2] == "ok", detail))
        elif fields[0] == "VALUE" and len(fields) >= 2:
            values[fields[1]] = " ".join(fields[2:])
    return checks, values


# If the test process is killed outright (so no finally block runs), the kernel kills QEMU
# and the daemon too instead of leaving them behind (util-linux setpriv, kept across exec).
DIE_WITH_PARENT = ["setpriv", "--pdeathsig", "KILL"]


def _kill_group(process: subprocess.Popen) -> None:
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


def host_root_arguments() -> tuple[list[str], str]:
    """QEMU arguments sharing the host's / read-only over 9p, and the kernel command-line word
    that makes the guest's /init mount it (see tests/guest/image.py).

    security_model=none shows the host's owners and modes as they are; readonly=on makes the
    guest unable to change anything on the host through this share.
    """
    share = (f"local,path=/,mount_tag={guest_image.HOST_ROOT_TAG},security_model=none,"
             "readonly=on,id=hostroot")
    return ["-virtfs", share], guest_image.HOST_ROOT_CMDLINE_FLAG


def qemu_command(image: guest_image.GuestImage, initramfs: pathlib.Path, socket_path: pathlib.Path,
                 console_path: pathlib.Path, qemu: str = QEMU, host_root: bool = False,
                 extra_sockets: dict[str, pathlib.Path] | None = None, *, cpus: int = 1,
                 request_queues: int = 1) -> list[str]:
    """With several CPUs, TCG runs one host thread per vCPU (thread=multi); without it all
    vCPUs share one thread and nothing in the guest runs in parallel."""
    memory = f"{GUEST_MEMORY_MIB}M"
    accel = "tcg" if cpus == 1 else "tcg,thread=multi"
    device = f"vhost-user-fs-pci,queue-size=1024,chardev=c0,tag={guest_image.MOUNT_TAG}"
    if request_queues != 1:
        device += f",num-request-queues={request_queues}"
    host_root_args, cmdline_flag = host_root_arguments() if host_root else ([], "")
    extra_devices = []
    for index, (tag, extra_socket) in enumerate((extra_sockets or {}).items(), start=1):
        extra_devices += ["-chardev", f"socket,id=c{index},path={extra_socket}",
                          "-device", f"vhost-user-fs-pci,queue-size=1024,chardev=c{index},tag={tag}"]
    return [
        qemu, "-accel", accel, "-smp", str(cpus), "-m", memory,
        "-object", f"memory-backend-memfd,id=mem,size={memory},share=on",
        "-numa", "node,memdev=mem",
        "-chardev", f"socket,id=c0,path={socket_path}",
        "-device", device,
        *extra_devices,
        "-kernel", str(image.kernel), "-initrd", str(initramfs),
        # panic=-1 turns a guest panic (e.g. /init dying) into an immediate reboot, which
        # -no-reboot turns into QEMU exiting, so a broken guest fails fast instead of hanging.
        *host_root_args,
        "-append", f"console=ttyS0 panic=-1 quiet {cmdline_flag}".rstrip(),
        "-nodefaults", "-no-user-config", "-display", "none",
        "-serial", f"file:{console_path}", "-no-reboot",
    ]


def _wait_for_guest(qemu_process: subprocess.Popen, daemon_processes: list[subprocess.Popen],
                    started: float, timeout: float, failure) -> int:
    """Waits for QEMU to exit; fails at the deadline, or soon after a daemon dies under a
    running guest (QEMU then stays up with the guest stuck on the share until the deadline)."""
    daemon_died_at = None
    while True:
        returncode = qemu_process.poll()
        if returncode is not None:
            return returncode
        now = time.monotonic()
        dead = [process for process in daemon_processes if process.poll() is not None]
        if daemon_died_at is None and dead:
            daemon_died_at = now
        if daemon_died_at is not None and now - daemon_died_at > DAEMON_DEATH_GRACE_SECONDS:
            raise failure(f"daemon exited with {dead[0].returncode} while the guest was running")
        if now > started + timeout:
            raise failure(f"guest did not power off within {timeout:.0f} s")
        time.sleep(0.1)


#: Console lines of a guest kernel that died (an oops, a panic).
_GUEST_KERNEL_CRASH = re.compile(r"^\[\s*[\d.]+\]\s+(Oops: |Kernel panic - )", re.MULTILINE)


def guest_kernel_crashed_before_mount(console: str) -> bool:
    """Whether the guest's kernel died before its /init mounted the share.

    Under TCG with several vCPUs a booting Linux 6.12 sometimes dies in its own start-up (an
    int3 oops while it patches its code and brings up the other vCPUs): QEMU's emulation, not the
    share, which no request has reached yet.  Such a boot says nothing about the daemon.
    """
    return "GUEST-MOUNTED" not in console and _GUEST_KERNEL_CRASH.search(console) is not None


def boot(daemon: str, shared_dir: pathlib.Path, script: str, **options: Any) -> BootResult:
    """Runs one guest boot (:func:`_boot_attempt`), and once more when the guest's kernel died
    before the share was mounted (:func:`guest_kernel_crashed_before_mount`), logged as such."""
    result = _boot_attempt(daemon, shared_dir, script, **options)
    if guest_kernel_crashed_before_mount(result.console):
        log.warning("the guest kernel crashed during its own start-up, before the share was "
                    "mounted (TCG); booting again:\n%s", tail(result.console, 15))
        result = _boot_attempt(daemon, shared_dir, script, **options)
    return result


def _boot_attempt(daemon: str, shared_dir: pathlib.Path, script: str, *,
                  daemon_args: list[str] = (), wrapper: list[str] = (), timeout: float = 300.0,
                  log_dir: pathlib.Path | None = None,
                  extra_files: dict[str, bytes] | None = None, qemu: str = QEMU,
                  host_root: bool = False, command: list[str] | None = None,
                  socket_owner: tuple[int, int] | None = None,
                  extra_shares: list[ExtraShare] = (),
                  kernel: str = guest_image.DEFAULT_KERNEL, cpus: int = 1,
                  request_queues: int = 1) -> BootResult:
    """Runs one guest boot; raises BootError if it does not finish within ``timeout`` seconds.

    ``kernel`` picks the guest kernel (:data:`guest.image.KERNELS`), ``cpus`` the vCPUs and
    ``request_queues`` the device's num-request-queues (the daemon must offer as many).

    ``wrapper`` is put in front of the daemon's command line (e.g. strace, to observe the
    host syscalls).  ``extra_files`` go into the guest's / next to the workload script.
    ``log_dir`` receives console.log and daemon.log (kept for post-mortems); a private
    temporary directory is used otherwise.  The socket always lives in a short /tmp path
    because AF_UNIX paths are limited to 108 bytes.

    ``host_root`` shares the host's / read-only over 9p: the workload can then run the host's
    programs on the share with ``in_host COMMAND...`` (scripts/lib.sh), which chroots into it;
    there the virtio-fs share is at /mnt, /tmp is a guest tmpfs.

    ``command`` replaces the daemon's usual argv prefix (e.g. to run it as another host user);
    ``socket_owner`` (uid, gid) then gets the socket's folder, so that user can listen there.
    ``extra_shares`` adds one more device and daemon each (logs in daemon-TAG.log).
    """
    command = list(command) if command is not None else daemon_command(daemon)
    if host_root and not pathlib.Path("/mnt").is_dir():
        raise BootError("host_root needs a /mnt folder on the host to bind the share onto")
    image = guest_image.build(kernel=kernel)
    socket_dir = pathlib.Path(tempfile.mkdtemp(prefix="vfs-", dir="/tmp"))
    if socket_owner is not None:
        os.chown(socket_dir, *socket_owner)
    own_log_dir = log_dir is None
    logs = pathlib.Path(tempfile.mkdtemp(prefix="vfs-logs-")) if own_log_dir else log_dir
    socket_path = socket_dir / "vhost.sock"
    console_path = logs / "console.log"
    daemon_log_path = logs / "daemon.log"
    qemu_log_path = logs / "qemu.log"
    daemon_process = qemu_process = None
    extra_processes: dict[str, subprocess.Popen] = {}
    extra_sockets = {extra.tag: socket_dir / f"{extra.tag}.sock" for extra in extra_shares}
    started = time.monotonic()

    def read_logs() -> tuple[str, str]:
        console = console_path.read_text(errors="replace") if console_path.exists() else ""
        daemon_log = daemon_log_path.read_text(errors="replace") if daemon_log_path.exists() else ""
        return console, daemon_log

    def failure(reason: str) -> BootError:
        console, daemon_log = read_logs()
        return BootError(
            f"{daemon} boot failed: {reason}\n--- guest console (tail) ---\n{tail(console, 40)}"
            f"\n--- daemon log (tail) ---\n{tail(daemon_log, 40)}"
        )

    try:
        logs.mkdir(parents=True, exist_ok=True)
        console_path.write_text("")
        initramfs = guest_image.initramfs_with(image, script, socket_dir / "initramfs.cpio", extra_files)
        with daemon_log_path.open("wb") as daemon_log_file:
            daemon_process = subprocess.Popen(
                [*DIE_WITH_PARENT, *wrapper, *command, "--socket-path", str(socket_path), "--shared-dir", str(shared_dir),
                 *daemon_args],
                stdin=subprocess.DEVNULL, stdout=daemon_log_file, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        for extra in extra_shares:
            with (logs / f"daemon-{extra.tag}.log").open("wb") as extra_log_file:
                extra_processes[extra.tag] = subprocess.Popen(
                    [*DIE_WITH_PARENT, *wrapper, *command, "--socket-path", str(extra_sockets[extra.tag]),
                     "--shared-dir", str(extra.shared_dir), *extra.daemon_args],
                    stdin=subprocess.DEVNULL, stdout=extra_log_file, stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
        deadline = time.monotonic() + SOCKET_APPEAR_SECONDS
        waiting = [(daemon_process, socket_path)]
        waiting += [(extra_processes[tag], path) for tag, path in extra_sockets.items()]
        for process, path in waiting:
            while not path.exists():
                if process.poll() is not None:
                    raise failure(f"daemon for {path.name} exited with {process.returncode} before listening")
                if time.monotonic() > deadline:
                    raise failure(f"daemon did not create {path} within {SOCKET_APPEAR_SECONDS} s")
                time.sleep(0.05)

        with qemu_log_path.open("wb") as qemu_log_file:
            qemu_process = subprocess.Popen(
                [*DIE_WITH_PARENT, *qemu_command(image, initramfs, socket_path, console_path, qemu,
                                               host_root, extra_sockets, cpus=cpus,
                                               request_queues=request_queues)],
                stdin=subprocess.DEVNULL, stdout=qemu_log_file, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        qemu_returncode = _wait_for_guest(qemu_process, [daemon_process, *extra_processes.values()],
                                          started, timeout, failure)
        if qemu_returncode != 0:
            qemu_output = qemu_log_path.read_text(errors="replace")
            raise failure(f"QEMU exited with {qemu_returncode}: {qemu_output.strip()}")

        try:
            daemon_returncode = daemon_process.wait(timeout=DAEMON_EXIT_SECONDS)
        except subprocess.TimeoutExpired:
            daemon_returncode = None
        extra_returncodes = {}
        for tag, process in extra_processes.items():
            try:
                extra_returncodes[tag] = process.wait(timeout=DAEMON_EXIT_SECONDS)
            except subprocess.TimeoutExpired:
                extra_returncodes[tag] = None
        seconds = time.monotonic() - started
        console, daemon_log = read_logs()
        checks, values = parse_console(console)
        extra_logs = {tag: (logs / f"daemon-{tag}.log").read_text(errors="replace") for tag in extra_processes}
        return BootResult(daemon, console, daemon_log, daemon_returncode, qemu_returncode,
                          seconds, checks, values, extra_logs, extra_returncodes)
    finally:
        for process in (qemu_process, daemon_process, *extra_processes.values()):
            if process is not None:
                _kill_group(process)
        shutil.rmtree(socket_dir, ignore_errors=True)
        if own_log_dir:
            shutil.rmtree(logs, ignore_errors=True)
