"""--sandbox, --seccomp and the capability sets, seen from outside the daemon.

What a user can check on the host: /proc/PID/root and mountinfo of the process that serves
(the namespace sandbox's child), its namespaces, the CapEff/CapPrm/CapBnd/CapInh lines and the
Seccomp line of /proc/PID/status, and what happens when a plugin makes a system call outside
the allow-list.  Capability and namespace checks run against the Rust daemon too.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import signal
import struct
import subprocess
import textwrap
import time
from pathlib import Path

import pyseccomp
import pytest
from support.plugins import install_plugin_package
from virtiofsd.config import Config
from virtiofsd.errors import ConfigError
from virtiofsd.fuse import abi
from virtiofsd.fuse.abi import ROOT_ID, Opcode
from virtiofsd.sandbox.capabilities import DEFAULT_CAPABILITIES, kept_capabilities
from virtiofsd.testing import running_daemon

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="sandboxes and capabilities need root")

#: Capability numbers (linux/capability.h).
CAP_NUMBERS = {"chown": 0, "dac_override": 1, "dac_read_search": 2, "fowner": 3, "fsetid": 4,
               "setgid": 6, "setuid": 7, "mknod": 27, "sys_admin": 21, "setfcap": 31}
DOCUMENTED = {"chown", "dac_override", "fowner", "fsetid", "setgid", "setuid", "mknod", "setfcap"}


def mask(names: set[str]) -> int:
    return sum(1 << CAP_NUMBERS[name] for name in names)


def status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return dict(line.split(":\t", 1) for line in lines if ":\t" in line)


def serving_pid(pid: int, timeout: float = 5.0) -> int:
    """The process that serves: ``pid`` itself, or its descendant that is pid 1 of a new pid
    namespace (the namespace sandbox's child; the Rust daemon forks a helper on the way)."""
    deadline = time.monotonic() + timeout
    while True:
        pending, seen = [pid], []
        while pending:
            current = pending.pop()
            seen.append(current)
            for task in os.listdir(f"/proc/{current}/task"):
                try:
                    children = Path(f"/proc/{current}/task/{task}/children").read_text().split()
                except FileNotFoundError:
                    continue
                pending.extend(int(child) for child in children)
        for candidate in seen:
            try:
                nspid = status(candidate)["NSpid"].split()
            except FileNotFoundError:
                continue
            if len(nspid) > 1 and nspid[-1] == "1":
                return candidate
        if len(seen) == 1 and "NSpid" in status(pid) and len(status(pid)["NSpid"].split()) == 1:
            if not Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
                return pid
        assert time.monotonic() < deadline, f"no serving process under {pid}"
        time.sleep(0.05)


@pytest.fixture
def started(command_of):
    """``started(kind, share, *options, **running_daemon_options)``: the suite's command line
    (which asks for --sandbox none: a later --sandbox wins, for ours and the Rust daemon)."""
    return lambda kind, share, *extra, **options: running_daemon(command_of(kind, *extra), share,
                                                                 **options)


@pytest.fixture
def share(tmp_path: Path) -> Path:
    directory = tmp_path / "share"
    directory.mkdir()
    (directory / "hello.txt").write_bytes(b"hello\n")
    (directory / "sub").mkdir()
    return directory


@pytest.fixture
def kind(daemon_kind: str) -> str:
    """ours, then the Rust daemon (skipped when not installed)."""
    return daemon_kind


# --- namespace ----------------------------------------------------------------------------------


def test_namespace_daemon_sees_only_the_shared_folder_as_root(started, kind, share):
    with started(kind, share, "--sandbox", "namespace") as session:
        pid = serving_pid(session.process.pid)
        assert pid != session.process.pid
        root = Path(f"/proc/{pid}/root")
        assert (root.stat().st_dev, root.stat().st_ino) == (share.stat().st_dev,
                                                            share.stat().st_ino)
        assert sorted(os.listdir(root)) == sorted(os.listdir(share))
        mount_points = [line.split()[4] for line in
                        Path(f"/proc/{pid}/mountinfo").read_text().splitlines()]
        assert mount_points == ["/"], mount_points
        for namespace in ("mnt", "pid", "net"):
            assert os.readlink(f"/proc/{pid}/ns/{namespace}") != \
                os.readlink(f"/proc/self/ns/{namespace}"), namespace
        fuse = session.client
        entry, handle = fuse.create(ROOT_ID, "made-inside", 0o644, os.O_RDWR | os.O_CREAT)
        fuse.write(entry.nodeid, handle.fh, 0, b"inside")
        fuse.release(entry.nodeid, handle.fh)
        assert (share / "made-inside").read_bytes() == b"inside"
        assert fuse.lookup(ROOT_ID, "sub").attr.ino == (share / "sub").stat().st_ino


def test_namespace_parent_waits_without_capabilities_and_cleans_up(started, share):
    with started("ours", share, "--sandbox", "namespace") as session:
        parent = status(session.process.pid)
        assert serving_pid(session.process.pid) != session.process.pid
        for line in ("CapEff", "CapPrm", "CapBnd", "CapInh"):
            assert int(parent[line], 16) == 0, line
        session.client.close()
        session.client = None
        assert session.process.wait(10) == 0
        assert not session.socket_path.exists(), "the parent removes the socket"
        assert not Path(str(session.socket_path) + ".pid").exists()


def test_namespace_sandbox_loads_the_seccomp_filter_by_default(started, share):
    with started("ours", share, "--sandbox", "namespace") as session:
        pid = serving_pid(session.process.pid)
        assert status(pid)["Seccomp"] == "2"
        assert session.client.lookup(ROOT_ID, "hello.txt").attr.size == 6


# --- chroot and none ----------------------------------------------------------------------------


def test_chroot_daemon_has_the_shared_folder_as_root(started, kind, share):
    with started(kind, share, "--sandbox", "chroot") as session:
        pid = serving_pid(session.process.pid)
        assert pid == session.process.pid
        root = Path(f"/proc/{pid}/root")
        assert (root.stat().st_dev, root.stat().st_ino) == (share.stat().st_dev,
                                                            share.stat().st_ino)
        fuse = session.client
        assert fuse.lookup(ROOT_ID, "hello.txt").attr.size == 6
        fuse.mkdir(ROOT_ID, "made-in-chroot", 0o755)
        assert (share / "made-in-chroot").is_dir()


def test_none_keeps_the_host_root(started, share):
    with started("ours", share, "--sandbox", "none") as session:
        pid = session.process.pid
        assert os.stat(f"/proc/{pid}/root").st_ino == os.stat("/").st_ino
        assert session.client.lookup(ROOT_ID, "hello.txt").attr.size == 6
        assert status(pid)["Seccomp"] == "2", "seccomp kill is the default with any sandbox"


# --- capabilities -------------------------------------------------------------------------------


@pytest.mark.parametrize("sandbox", ["namespace", "none"])
def test_capability_sets_are_exactly_the_documented_ones(started, kind, share, sandbox):
    """Without file handles (with them CAP_DAC_READ_SEARCH is added: tested below)."""
    with started(kind, share, "--sandbox", sandbox, "--inode-file-handles=never") as session:
        lines = status(serving_pid(session.process.pid))
    expected = mask(DOCUMENTED)
    assert {name: int(lines[name], 16) for name in ("CapEff", "CapPrm", "CapBnd", "CapInh")} \
        == {"CapEff": expected, "CapPrm": expected, "CapBnd": 0, "CapInh": 0}


def test_modcaps_adjusts_the_kept_set(started, kind, share):
    with started(kind, share, "--modcaps=+sys_admin:-mknod",
                 "--inode-file-handles=never") as session:
        lines = status(serving_pid(session.process.pid))
    expected = mask(DOCUMENTED - {"mknod"} | {"sys_admin"})
    for name in ("CapEff", "CapPrm"):
        assert int(lines[name], 16) == expected, name


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs setpriv (util-linux)")
def test_modcaps_refuses_a_capability_the_process_does_not_hold(command_of, kind, share, tmp_path):
    """Root started in a bounding set without CAP_SYS_ADMIN (a container's; setpriv's here)
    cannot keep it: --modcaps=+sys_admin stops both daemons at start, with exit status 1,
    while the same start without that item serves."""
    outside_bounding_set = ["setpriv", "--bounding-set", "-sys_admin"]

    def start(*options: str) -> subprocess.CompletedProcess[str]:
        argv = [arg.replace("{socket_path}", str(tmp_path / "refused.sock"))
                .replace("{shared_dir}", str(share)) for arg in command_of(kind, *options)]
        return subprocess.run([*outside_bounding_set, *argv], capture_output=True, text=True,
                              timeout=30, check=False)

    refused = start("--modcaps=+sys_admin")
    assert refused.returncode == 1, refused.stdout + refused.stderr
    if kind == "ours":
        assert ("--modcaps=+sys_admin: this process does not hold CAP_SYS_ADMIN"
                in refused.stderr), refused.stderr
    with running_daemon([*outside_bounding_set, *command_of(kind, "--modcaps=-mknod")],
                        share) as session:
        assert session.client.lookup(ROOT_ID, "hello.txt").attr.size == 6


def test_file_handles_keep_dac_read_search_and_cannot_lose_it():
    handles = Config(shared_dir="/", inode_file_handles="prefer")
    assert kept_capabilities(handles) == DEFAULT_CAPABILITIES | {"dac_read_search"}
    assert kept_capabilities(Config(shared_dir="/", inode_file_handles="never")) \
        == DEFAULT_CAPABILITIES
    with pytest.raises(ConfigError, match="cannot remove dac_read_search"):
        kept_capabilities(Config(shared_dir="/", inode_file_handles="mandatory",
                                 modcaps="-dac_read_search"))


def test_the_default_file_handle_store_keeps_dac_read_search(started, share):
    with started("ours", share) as session:
        lines = status(serving_pid(session.process.pid))
    assert int(lines["CapEff"], 16) == mask(DOCUMENTED | {"dac_read_search"})


def test_a_plugin_may_ask_for_a_capability():
    assert "sys_admin" in kept_capabilities(Config(shared_dir="/"), [["CAP_SYS_ADMIN"]])
    with pytest.raises(ConfigError, match="unknown capability"):
        kept_capabilities(Config(shared_dir="/"), [["no_such_thing"]])


def test_guest_credentials_still_switch_under_the_reduced_sets(started, share):
    """CREATE as guest uid 1000 (credentials switched per thread, DAC_OVERRIDE raised back
    from the permitted set) still owns the file as 1000 on the host."""
    os.chmod(share, 0o777)
    with started("ours", share, "--sandbox", "namespace", uid=1000, gid=1000) as session:
        fuse = session.client
        entry, handle = fuse.create(ROOT_ID, "guest-owned", 0o644, os.O_RDWR | os.O_CREAT)
        fuse.release(entry.nodeid, handle.fh)
    info = (share / "guest-owned").stat()
    assert (info.st_uid, info.st_gid) == (1000, 1000)


# --- seccomp ------------------------------------------------------------------------------------

SYSCALL_PLUGIN = textwrap.dedent('''
    """Test plugins: STATFS makes a system call outside the allow-list (getpriority)."""
    import os
    import types

    from virtiofsd import hookimpl


    @hookimpl(tryfirst=True)
    def virtiofsd_fuse_statfs(req, nodeid):
        os.getpriority(os.PRIO_PROCESS, 0)


    allow = types.SimpleNamespace(
        virtiofsd_seccomp_syscalls=hookimpl(lambda config: ["getpriority"]))
''')


@pytest.fixture
def syscall_plugin(tmp_path: Path, monkeypatch) -> None:
    """``--plugin getpriority`` calls getpriority on STATFS; ``--plugin allow-getpriority``
    adds getpriority to the allow-list through the hook."""
    install_plugin_package(tmp_path / "site", "getpriority_probe", SYSCALL_PLUGIN,
                           {"getpriority": "getpriority_probe",
                            "allow-getpriority": "getpriority_probe:allow"}, monkeypatch)


@pytest.mark.parametrize("sandbox", ["none", "namespace"])
@pytest.mark.parametrize("mode", ["kill", "trap"])
def test_a_syscall_outside_the_list_kills_the_daemon(started, syscall_plugin, share, sandbox, mode):
    with started("ours", share, "--plugin", "getpriority", "--seccomp", mode,
                 "--sandbox", sandbox, "--thread-pool-size", "2") as session:
        assert session.client.lookup(ROOT_ID, "hello.txt").attr.size == 6
        with pytest.raises((OSError, EOFError)):
            session.client.statfs(ROOT_ID)
        returncode = session.process.wait(10)
        log_text = session.log_text()
        session.client.close()
        session.client = None
    # Without a sandbox the process itself dies of SIGSYS; the namespace parent reports it.
    assert returncode == (-signal.SIGSYS if sandbox == "none" else 128 + signal.SIGSYS)
    if sandbox == "namespace":
        assert re.search(r"killed by SIGSYS", log_text), log_text


#: SECCOMP_RET_LOG in an audit record of type 1326 (AUDIT_SECCOMP).
SECCOMP_RET_LOG = 0x7FFC0000
AUDIT_LOG = Path("/var/log/audit/audit.log")


def kernel_log_records() -> list[str]:
    """What the kernel logged so far: its ring buffer (/dev/kmsg, where audit records go without
    an audit daemon) and the audit daemon's log.

    :raises pytest.skip.Exception: neither can be read here.
    """
    records: list[str] = []
    readable = False
    try:
        fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        pass
    else:
        readable = True
        try:
            while True:
                try:
                    records.append(os.read(fd, 8192).decode(errors="replace"))
                except BlockingIOError:
                    break
                except BrokenPipeError:
                    continue  # records overwritten while reading: go on with the next
        finally:
            os.close(fd)
    try:
        records += AUDIT_LOG.read_text(errors="replace").splitlines()
        readable = True
    except OSError:
        pass
    if not readable:
        pytest.skip("neither /dev/kmsg nor the audit log is readable (dmesg_restrict without "
                    "CAP_SYSLOG, or a container), so what the kernel logged cannot be seen")
    return records


def test_log_mode_lets_the_syscall_through_and_the_kernel_logs_it(started, syscall_plugin,
                                                                  share):
    if "log" not in Path("/proc/sys/kernel/seccomp/actions_logged").read_text().split():
        pytest.skip("this kernel is set not to log SECCOMP_RET_LOG "
                    "(/proc/sys/kernel/seccomp/actions_logged)")
    getpriority = pyseccomp.resolve_syscall(pyseccomp.system_arch(), "getpriority")
    with started("ours", share, "--plugin", "getpriority", "--seccomp", "log") as session:
        pid = session.process.pid
        logged = re.compile(rf"type=1326 .*\bpid={pid} .*\bsyscall={getpriority} .*"
                            rf"\bcode=0x{SECCOMP_RET_LOG:x}\b")
        # The kernel prints audit records under printk's rate limit (10 in 5 s), which the
        # kills of other tests may have used up: ask again until one is seen.
        deadline = time.monotonic() + 15
        while True:
            session.client.statfs(ROOT_ID)
            assert session.process.poll() is None
            if any(logged.search(record) for record in kernel_log_records()):
                break
            assert time.monotonic() < deadline, f"no record of getpriority from pid {pid}"
            time.sleep(0.5)
        assert status(pid)["Seccomp"] == "2"
        assert session.client.lookup(ROOT_ID, "hello.txt").attr.size == 6


def test_a_plugin_can_add_a_syscall_to_the_list(started, syscall_plugin, share):
    with started("ours", share, "--plugin", "getpriority", "--plugin", "allow-getpriority",
                 "--sandbox", "namespace") as session:
        session.client.statfs(ROOT_ID)
        assert session.client.lookup(ROOT_ID, "hello.txt").attr.size == 6


def test_seccomp_none_loads_no_filter(started, syscall_plugin, share):
    with started("ours", share, "--plugin", "getpriority", "--seccomp", "none") as session:
        assert status(session.process.pid)["Seccomp"] == "0"
        session.client.statfs(ROOT_ID)


PROCESS_PLUGIN = textwrap.dedent('''
    """Test plugins: STATFS starts a process, through fork(2) (clone without CLONE_THREAD) or
    through a raw clone3(2) call, then lets the real STATFS answer."""
    import ctypes
    import os
    import types

    from virtiofsd import hookimpl

    SYS_CLONE3 = 435
    libc = ctypes.CDLL(None, use_errno=True)


    def fork(req, nodeid):
        """The child exits at once; the parent makes no other call (wait4 is not allowed)."""
        if os.fork() == 0:
            os._exit(0)


    def empty_clone3(req, nodeid):
        """clone3 without its argument structure, which the kernel refuses (EINVAL) before it
        makes any process."""
        if libc.syscall(SYS_CLONE3, None, 0) != 0:
            error = ctypes.get_errno()
            raise OSError(error, os.strerror(error))


    forking = types.SimpleNamespace(virtiofsd_fuse_statfs=hookimpl(tryfirst=True)(fork))
    cloning = types.SimpleNamespace(virtiofsd_fuse_statfs=hookimpl(tryfirst=True)(empty_clone3))
''')


@pytest.fixture
def process_plugin(tmp_path: Path, monkeypatch) -> None:
    """``--plugin fork`` forks on STATFS, ``--plugin clone3`` calls clone3 on STATFS."""
    install_plugin_package(tmp_path / "site", "process_probe", PROCESS_PLUGIN,
                           {"fork": "process_probe:forking", "clone3": "process_probe:cloning"},
                           monkeypatch)


@pytest.mark.parametrize("sandbox", ["none", "namespace"])
def test_a_fork_under_the_filter_kills_the_daemon(started, process_plugin, share, sandbox):
    """Threads start (the lookup is served by a pool thread started under the filter), but
    clone without CLONE_THREAD, which is what fork(2) is, kills the daemon."""
    with started("ours", share, "--plugin", "fork", "--sandbox", sandbox,
                 "--thread-pool-size", "2") as session:
        assert session.client.lookup(ROOT_ID, "hello.txt").attr.size == 6
        with pytest.raises((OSError, EOFError)):
            session.client.statfs(ROOT_ID)
        returncode = session.process.wait(10)
        session.client.close()
        session.client = None
    assert returncode == (-signal.SIGSYS if sandbox == "none" else 128 + signal.SIGSYS)


def test_without_the_filter_the_same_fork_succeeds(started, process_plugin, share):
    with started("ours", share, "--plugin", "fork", "--seccomp", "none") as session:
        assert session.client.statfs(ROOT_ID)
        assert session.process.poll() is None


IOCTL_PLUGIN = textwrap.dedent('''
    """Test plugins: STATFS makes an ioctl on the shared folder, the one Python's isatty()
    makes (TCGETS) or another (FIONREAD), then lets the real STATFS answer."""
    import fcntl
    import os
    import termios
    import types

    from virtiofsd import hookimpl


    def ioctl_of(request):
        def statfs(req, nodeid):
            fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY)
            try:
                fcntl.ioctl(fd, request, bytes(64))
            except OSError:
                pass  # a folder is no terminal, nor does it count readable bytes
            finally:
                os.close(fd)
        return types.SimpleNamespace(virtiofsd_fuse_statfs=hookimpl(tryfirst=True)(statfs))


    tcgets = ioctl_of(termios.TCGETS)
    fionread = ioctl_of(termios.FIONREAD)
''')


@pytest.mark.parametrize("request_name, killed", [("tcgets", False), ("fionread", True)])
def test_ioctl_is_allowed_only_for_isatty(started, tmp_path, monkeypatch, share, request_name,
                                          killed):
    install_plugin_package(tmp_path / "site", "ioctl_probe", IOCTL_PLUGIN,
                           {name: f"ioctl_probe:{name}" for name in ("tcgets", "fionread")},
                           monkeypatch)
    with started("ours", share, "--plugin", request_name) as session:
        if killed:
            with pytest.raises((OSError, EOFError)):
                session.client.statfs(ROOT_ID)
            assert session.process.wait(10) == -signal.SIGSYS
            session.client.close()
            session.client = None
        else:
            assert session.client.statfs(ROOT_ID)
            assert session.process.poll() is None


@pytest.mark.parametrize("seccomp, answer", [("kill", errno.ENOSYS), ("none", errno.EINVAL)])
def test_clone3_is_answered_enosys_under_the_filter(started, process_plugin, share, seccomp,
                                                    answer):
    """clone3 passes its flags in memory, out of the filter's sight, so the filter answers it
    ENOSYS whatever they are (glibc then starts threads with clone); without the filter the
    kernel itself answers this clone3 (EINVAL)."""
    with started("ours", share, "--plugin", "clone3", "--seccomp", seccomp) as session:
        with pytest.raises(OSError) as refused:
            session.client.statfs(ROOT_ID)
        assert refused.value.errno == answer
        assert session.process.poll() is None


def test_a_stopped_and_continued_daemon_serves_on_under_the_filter(started, share):
    """SIGSTOP and SIGCONT (a debugger, ``kill -STOP``) interrupt the threads' timed waits,
    which the kernel resumes through restart_syscall.  Sent to the daemon's process group,
    which holds it whether it runs alone or under a wrapper (strace, while measuring)."""
    with started("ours", share, "--thread-pool-size", "2") as session:
        assert session.client.lookup(ROOT_ID, "hello.txt").attr.size == 6
        os.killpg(session.process.pid, signal.SIGSTOP)
        time.sleep(0.5)
        os.killpg(session.process.pid, signal.SIGCONT)
        time.sleep(1.5)
        assert session.process.poll() is None
        assert session.client.lookup(ROOT_ID, "sub").attr.ino == (share / "sub").stat().st_ino


def supplementary_groups(*gids: int) -> bytes:
    """The supplementary-groups request extension (FUSE_EXT_GROUPS) carrying ``gids``."""
    body = abi.SUPP_GROUPS.pack(len(gids)) + struct.pack(f"<{len(gids)}I", *gids)
    body += bytes(-(abi.EXT_HEADER.size + len(body)) % 8)
    return abi.EXT_HEADER.pack(abi.EXT_HEADER.size + len(body), abi.EXT_SUP_GROUPS) + body


def test_the_guests_supplementary_groups_are_taken_under_the_filter(started, share):
    """A guest may send its supplementary groups with a creating request (a Linux guest does
    only after CREATE_SUPP_GROUP, which is not offered, but a hostile one need not ask): the
    creating thread takes them (setgroups) and gives its own back (getgroups) under
    --seccomp kill.  The folder lets only group 4242 in, and a thread that takes the guest's
    groups does not raise CAP_DAC_OVERRIDE again, so the creation proves they were taken."""
    folder = share / "group-only"
    folder.mkdir()
    os.chown(folder, 0, 4242)
    folder.chmod(0o070)
    with started("ours", share, uid=1000, gid=1000) as session:
        fuse = session.client
        parent = fuse.lookup(ROOT_ID, "group-only").nodeid
        body = (abi.MKDIR_IN.pack(0o755, 0), b"made\0")
        assert fuse.request(Opcode.MKDIR, parent, body, 4096,
                            extensions=supplementary_groups(4242))[0] == 0
        assert fuse.lookup(ROOT_ID, "hello.txt").attr.size == 6
    assert (folder / "made").stat().st_uid == 1000


# --- no import from the shared folder -----------------------------------------------------------

LATE_IMPORT_PLUGIN = textwrap.dedent('''
    """Test plugin: STATFS imports a module that was not imported before the sandbox."""
    from virtiofsd import hookimpl


    @hookimpl(tryfirst=True)
    def virtiofsd_fuse_statfs(req, nodeid):
        import planted_by_guest  # noqa: F401
''')


@pytest.mark.parametrize("sandbox", ["namespace", "chroot"])
def test_a_late_import_cannot_run_a_module_the_guest_planted(started, tmp_path, share, sandbox,
                                                             monkeypatch):
    site = install_plugin_package(tmp_path / "site", "late_import", LATE_IMPORT_PLUGIN,
                                  {"late-import": "late_import"}, monkeypatch)
    # Inside the sandbox the plugin's folder on PYTHONPATH resolves here, in the share.
    planted = share / str(site).lstrip("/")
    planted.mkdir(parents=True)
    (planted / "planted_by_guest.py").write_text(
        "open('/executed-as-root', 'w').close()\n")
    with started("ours", share, "--plugin", "late-import", "--sandbox", sandbox) as session:
        with pytest.raises(OSError) as refused:
            session.client.statfs(ROOT_ID)
        assert refused.value.errno == errno.EIO
        assert "was not imported before the sandbox" in session.log_text()
        assert session.client.lookup(ROOT_ID, "hello.txt").attr.size == 6
    assert not (share / "executed-as-root").exists()
