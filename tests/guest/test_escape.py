"""A hostile guest tries to leave the share (scripts/escape.sh); the host checks that it did not.

One boot per daemon and sandbox mode.  The guest plays every trick a real guest can: symlinks to
``/``, climbing ``../..``, absolute host paths, ``/proc`` links, hard links and renames across the
share's root, ``..`` from the root, a FIFO and device nodes it made and then opens, setuid
binaries made by an ordinary user.  Each of its checks is a test here.

Then the host looks: nothing outside the share was read (sentinel files with an old access time
keep it; their contents never reach the console), written (contents, sizes and modification
times unchanged) or created (no name carrying the run's token anywhere on a watch list of host
folders, no new entry beside the share).  The share itself holds what it should: device nodes
the guest made are nodes on the host (the daemon opens none, see test_cve_regressions.py), the
user's setuid binary is the user's.

One boot per daemon and sandbox mode (:data:`SANDBOX_MODES`): the guarantees must hold without
the sandbox too, since users run ``--sandbox none`` in containers.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pathlib
import re
import secrets
import stat

import pytest

from . import runner

#: The ``--sandbox`` modes every escape attempt runs under.
SANDBOX_MODES = ("none", "namespace", "chroot")

BOOT_TIMEOUT = float(os.environ.get("VIRTIOFSD_GUEST_TIMEOUT", "600"))
SCRIPT = pathlib.Path(__file__).parent / "scripts" / "escape.sh"
GUEST_CHECKS = re.findall(r"^(?:check|expect|refuse)\s+(\w+)", SCRIPT.read_text(), re.MULTILINE)
#: Host folders where an escaped write would land (the guest aims at /tmp and the share's
#: neighbours; the others catch a path resolved against the daemon's root or cwd).
WATCHED_FOLDERS = ("/", "/tmp", "/etc", "/root", "/var/tmp", "/mnt")
#: Host files whose contents the guest must never see nor change.
WATCHED_FILES = ("/etc/passwd", "/etc/shadow", "/etc/machine-id", "/etc/hostname")
SENTINEL_ATIME = 946_684_800  # 2000-01-01: any read updates it, even with relatime


@dataclasses.dataclass(frozen=True)
class FileState:
    sha256: str
    size: int
    mtime_ns: int
    atime_ns: int
    mode: int

    @classmethod
    def of(cls, path: pathlib.Path | str, *, sentinel: bool) -> FileState:
        """The state of ``path``; for a sentinel (ours to touch) the access time is put back
        after reading for the digest, for a host file it is not recorded (others read it)."""
        st = os.lstat(path)
        digest = hashlib.sha256(pathlib.Path(path).read_bytes()).hexdigest()
        if sentinel:
            os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)
        return cls(digest, st.st_size, st.st_mtime_ns, st.st_atime_ns if sentinel else 0,
                   st.st_mode)


@dataclasses.dataclass
class EscapeBoot:
    result: runner.BootResult
    token: str
    root: pathlib.Path
    share: pathlib.Path
    outside: pathlib.Path
    secret: bytes
    before_outside: dict[str, FileState]
    after_outside: dict[str, FileState]
    before_watched: dict[str, FileState]
    after_watched: dict[str, FileState]
    root_entries: set[str]
    token_hits: list[str]


def _tree_state(folder: pathlib.Path) -> dict[str, FileState]:
    """The sentinel files of ``folder`` (flat: it holds no sub-folders)."""
    return {entry.name: FileState.of(entry.path, sentinel=True)
            for entry in sorted(os.scandir(folder), key=lambda entry: entry.name)
            if entry.is_file(follow_symlinks=False)}


def _watched_state() -> dict[str, FileState]:
    return {path: FileState.of(path, sentinel=False) for path in WATCHED_FILES
            if os.path.isfile(path)}


def _token_hits(token: str, folders: tuple[str | pathlib.Path, ...]) -> list[str]:
    hits = []
    for folder in folders:
        try:
            names = os.listdir(folder)
        except OSError:
            continue
        hits += [os.path.join(folder, name) for name in names if token in name]
    return hits


def run_escape(daemon_name: str, sandbox: str, root: pathlib.Path) -> EscapeBoot:
    token = f"escaped-{secrets.token_hex(6)}"
    secret = f"HOST-SECRET-{secrets.token_hex(16)}".encode()
    share, outside = root / "share", root / "outside"
    share.mkdir()
    outside.mkdir()
    (outside / "secret").write_bytes(secret + b"\n")
    (outside / "notes").write_bytes(b"must not change\n")
    for sentinel in outside.iterdir():
        os.utime(sentinel, (SENTINEL_ATIME, SENTINEL_ATIME))
    secret_fd = os.open(outside / "secret", os.O_RDONLY)
    try:
        # Links a host process left in the share, for the guest to try.
        os.symlink("/proc/self/root", share / "host-magic")
        os.symlink(outside / "secret", share / "host-link-to-secret")
        os.symlink(f"/proc/{os.getpid()}/fd/{secret_fd}", share / "host-fd-link")
        os.utime(outside / "secret", (SENTINEL_ATIME, SENTINEL_ATIME))
        before_outside = _tree_state(outside)
        before_watched = _watched_state()
        prelude = f"TOKEN={token}\nOUTSIDE={outside}\nSECRET_NAME=secret\n"
        result = runner.boot(daemon_name, share, runner.guest_script("escape.sh", prelude=prelude),
                             daemon_args=["--sandbox", sandbox], timeout=BOOT_TIMEOUT,
                             log_dir=root / "logs")
    finally:
        os.close(secret_fd)
    return EscapeBoot(
        result, token, root, share, outside, secret, before_outside, _tree_state(outside),
        before_watched, _watched_state(), {entry.name for entry in root.iterdir()},
        _token_hits(token, (*WATCHED_FOLDERS, root, outside, root.parent)),
    )


@pytest.fixture(params=SANDBOX_MODES)
def escape_boot(request, daemon_name: str, boot_once,
                tmp_path_factory: pytest.TempPathFactory) -> EscapeBoot:
    sandbox = request.param
    return boot_once(("escape", daemon_name, sandbox), lambda: run_escape(
        daemon_name, sandbox, tmp_path_factory.mktemp(f"escape-{daemon_name}-{sandbox}")))


@pytest.mark.parametrize("check_name", GUEST_CHECKS)
def test_guest_check(escape_boot: EscapeBoot, check_name: str) -> None:
    result = escape_boot.result
    check = result.check(check_name)
    assert check is not None, (f"the guest never reported {check_name!r}\n"
                               f"{result.console_tail(20)}")
    assert check.ok, f"guest check {check_name} failed: {check.detail}"


def test_the_guest_ran_to_the_end(escape_boot: EscapeBoot) -> None:
    assert escape_boot.result.markers()[:2] == ["GUEST-MOUNTED", "GUEST-WORKLOAD-EXIT 0"], (
        escape_boot.result.console_tail(30))


def test_nothing_outside_was_read(escape_boot: EscapeBoot) -> None:
    """No host secret reached the guest's console, and the sentinels' access times held."""
    console = escape_boot.result.console
    assert escape_boot.secret.decode() not in console
    for path in ("/etc/machine-id",):
        if os.path.isfile(path):
            content = pathlib.Path(path).read_text().strip()
            assert not content or content not in console, path
    for name, state in escape_boot.before_outside.items():
        assert escape_boot.after_outside[name].atime_ns == state.atime_ns, f"{name} was read"


def test_nothing_outside_was_written(escape_boot: EscapeBoot) -> None:
    assert escape_boot.after_outside == escape_boot.before_outside
    assert escape_boot.after_watched == escape_boot.before_watched


def test_nothing_outside_was_created(escape_boot: EscapeBoot) -> None:
    assert escape_boot.token_hits == [], "the guest wrote outside the share"
    assert escape_boot.root_entries == {"share", "outside", "logs"}
    assert sorted(path.name for path in escape_boot.outside.iterdir()) == ["notes", "secret"]


def test_guest_made_nodes_are_only_nodes_on_the_host(escape_boot: EscapeBoot) -> None:
    folder = escape_boot.share / "escape"
    kinds = {name: stat.S_IFMT(os.lstat(folder / name).st_mode)
             for name in ("fifo", "null", "mem", "disk")}
    assert kinds == {"fifo": stat.S_IFIFO, "null": stat.S_IFCHR, "mem": stat.S_IFCHR,
                     "disk": stat.S_IFBLK}


def test_setuid_binaries_stay_with_their_maker(escape_boot: EscapeBoot) -> None:
    """The one setuid binary left is the one the user kept, and it is the user's (uid 1000);
    the one chowned to root and the root one the user wrote to lost the bit."""
    folder = escape_boot.share / "escape"
    setuid = {}
    for directory, _folders, files in os.walk(folder):  # never into the guest's symlinks
        for name in files:
            st = os.lstat(os.path.join(directory, name))
            if stat.S_ISREG(st.st_mode) and st.st_mode & stat.S_ISUID:
                setuid[os.path.join(directory, name)] = st.st_uid
    assert setuid == {str(folder / "u" / "keep"): 1000}
    assert not (folder / "user-in-root").exists()


def test_daemon_survived_every_trick(escape_boot: EscapeBoot) -> None:
    result = escape_boot.result
    assert result.daemon_returncode == 0, result.daemon_log[-3000:]
    assert "Traceback" not in result.daemon_log
